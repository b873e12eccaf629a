//! The trust chain end to end: keys, documents, a node's pins.

use std::collections::BTreeMap;

use super::doc::{Bundle, Delegations, Policy, Root, Signed, Target, Targets, Timestamp};
use super::key::{Algorithm, SigningKey};
use super::*;

const NOW: u64 = 1_800_000_000;
const REPO: &str = "reg:5000/team/app";
const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

fn key(name: &str) -> SigningKey {
    SigningKey::generate(name, Algorithm::Ed25519).unwrap()
}

struct Repo {
    root: SigningKey,
    roots: Vec<Signed<Root>>,
    signers: BTreeMap<String, SigningKey>,
    stamp: SigningKey,
    delegations: Signed<Delegations>,
    targets: Signed<Targets>,
    stamp_version: u64,
}

impl Repo {
    fn new() -> Repo {
        let root = key("root");
        let first = Root { prefix: "reg:5000/team".into(), version: 1, key: root.public() };
        let roots = vec![Signed::sign(first, &[&root]).unwrap()];
        let alice = key("alice");
        let mut signers = BTreeMap::new();
        signers.insert("alice".to_string(), alice);
        let mut r = Repo {
            delegations: Signed::sign(
                Delegations {
                    repo: REPO.into(),
                    version: 0,
                    signers: BTreeMap::new(),
                    expires: NOW + 1000,
                },
                &[],
            )
            .unwrap(),
            targets: Signed::sign(
                Targets {
                    repo: REPO.into(),
                    version: 0,
                    tags: BTreeMap::new(),
                    expires: NOW + 1000,
                },
                &[],
            )
            .unwrap(),
            root,
            roots,
            signers,
            stamp: key("timestamp"),
            stamp_version: 0,
        };
        r.delegate();
        r.sign_tag("alice", "1.0", D1);
        r
    }

    fn delegate(&mut self) {
        let signers = self.signers.iter().map(|(n, k)| (n.clone(), k.public())).collect();
        let d = Delegations {
            repo: REPO.into(),
            version: self.delegations.signed.version + 1,
            signers,
            expires: NOW + 1000,
        };
        self.delegations = Signed::sign(d, &[&self.root]).unwrap();
    }

    fn sign_tag(&mut self, signer: &str, tag: &str, digest: &str) {
        let mut t = self.targets.signed.clone();
        t.version += 1;
        t.tags.insert(tag.into(), Target { digest: digest.into(), signer: signer.into() });
        self.targets = Signed::sign(t, &[&self.signers[signer]]).unwrap();
    }

    fn bundle(&mut self, expires: u64) -> Bundle {
        self.stamp_version += 1;
        let ts = Timestamp::over(&self.delegations, &self.targets, self.stamp_version, expires);
        Bundle {
            roots: self.roots.clone(),
            delegations: self.delegations.clone(),
            targets: self.targets.clone(),
            timestamp: Signed::sign(ts, &[&self.stamp]).unwrap(),
        }
    }

    fn pins(&self) -> Pins {
        let mut p = Pins::default();
        p.learn_roots(&self.roots).unwrap();
        p.learn_timestamp_key(&self.stamp.public()).unwrap();
        p.learn_policy(true, None).unwrap();
        p
    }
}

fn refusal(r: Result<Option<doc::Verified>, TrustError>) -> String {
    match r {
        Err(e) => e.to_string(),
        Ok(v) => panic!("accepted: {v:?}"),
    }
}

#[test]
fn a_signed_tag_passes_and_names_its_digest_and_signer() {
    let mut r = Repo::new();
    let mut pins = r.pins();
    let b = r.bundle(NOW + 100);
    let v = pins.check(REPO, Some("1.0"), None, Some(&b), NOW).unwrap().unwrap();
    assert_eq!((v.digest.as_str(), v.signer.as_str()), (D1, "alice"));
    // A digest reference passes when some signed tag names it; the tag and digest must agree.
    pins.check(REPO, None, Some(D1), Some(&b), NOW).unwrap().unwrap();
    let e = refusal(pins.check(REPO, Some("1.0"), Some(D2), Some(&b), NOW));
    assert!(e.contains("signed for sha256:1111"), "{e}");
    // Round trip through bytes, as stored and sent.
    let back = Bundle::from_bytes(&b.to_bytes()).unwrap();
    assert_eq!(back, b);
}

#[test]
fn unsigned_revoked_and_tampered_images_are_refused() {
    let mut r = Repo::new();
    let mut pins = r.pins();
    let b = r.bundle(NOW + 100);
    let e = refusal(pins.check(REPO, Some("2.0"), None, Some(&b), NOW));
    assert!(e.contains("no signature for reg:5000/team/app:2.0"), "{e}");
    let e = refusal(pins.check(REPO, Some("1.0"), None, None, NOW));
    assert!(e.contains("carries no signature"), "{e}");
    let e = refusal(pins.check("reg:5000/other/app", Some("1.0"), None, Some(&b), NOW));
    assert!(e.contains("does not cover") || e.contains("no trust root"), "{e}");

    // Someone rewrites the signed digest: the signer's signature no longer holds.
    let mut forged = b.clone();
    forged.targets.signed.tags.get_mut("1.0").unwrap().digest = D2.into();
    let e = refusal(pins.check(REPO, Some("1.0"), None, Some(&forged), NOW));
    assert!(e.contains("not signed by any of its current signers"), "{e}");

    // Revoking: a new targets version without the tag.
    let mut t = r.targets.signed.clone();
    t.version += 1;
    t.tags.remove("1.0");
    t.tags.insert("2.0".into(), Target { digest: D2.into(), signer: "alice".into() });
    r.targets = Signed::sign(t, &[&r.signers["alice"]]).unwrap();
    let revoked = r.bundle(NOW + 100);
    let e = refusal(pins.check(REPO, Some("1.0"), None, Some(&revoked), NOW));
    assert!(e.contains("not signed, or revoked"), "{e}");
    pins.check(REPO, Some("2.0"), None, Some(&revoked), NOW).unwrap().unwrap();
    // The older bundle, still within its timestamp, is now a replay for this node.
    let e = refusal(pins.check(REPO, Some("1.0"), None, Some(&b), NOW));
    assert!(e.contains("replayed"), "{e}");
}

#[test]
fn expired_or_foreign_timestamps_are_refused() {
    let mut r = Repo::new();
    let mut pins = r.pins();
    let stale = r.bundle(NOW - 1);
    let e = refusal(pins.check(REPO, Some("1.0"), None, Some(&stale), NOW));
    assert!(e.contains("timestamp of reg:5000/team/app expired"), "{e}");
    let mut other = r.bundle(NOW + 100);
    other.timestamp = Signed::sign(other.timestamp.signed.clone(), &[&key("mallory")]).unwrap();
    let e = refusal(pins.check(REPO, Some("1.0"), None, Some(&other), NOW));
    assert!(e.contains("not signed by the cluster"), "{e}");
    // A timestamp over other targets.
    let mut b = r.bundle(NOW + 100);
    r.sign_tag("alice", "2.0", D2);
    b.targets = r.targets.clone();
    let e = refusal(pins.check(REPO, Some("2.0"), None, Some(&b), NOW));
    assert!(e.contains("for other trust data"), "{e}");
    assert!(pins.learn_timestamp_key(&key("other").public()).is_err(), "a second key pinned");
}

#[test]
fn a_repository_key_rotated_by_the_root() {
    let mut r = Repo::new();
    let mut pins = r.pins();
    // Bob replaces alice: what alice signed no longer counts, what bob signs does.
    r.signers.clear();
    r.signers.insert("bob".into(), key("bob"));
    r.delegate();
    let b = r.bundle(NOW + 100);
    let e = refusal(pins.check(REPO, Some("1.0"), None, Some(&b), NOW));
    assert!(e.contains("not signed by any of its current signers"), "{e}");
    r.sign_tag("bob", "1.0", D1);
    let b = r.bundle(NOW + 100);
    let v = pins.check(REPO, Some("1.0"), None, Some(&b), NOW).unwrap().unwrap();
    assert_eq!(v.signer, "bob");
    // A signer list the root did not sign.
    let mut forged = b.clone();
    forged.delegations =
        Signed::sign(forged.delegations.signed.clone(), &[&key("mallory")]).unwrap();
    let e = refusal(pins.check(REPO, Some("1.0"), None, Some(&forged), NOW));
    assert!(e.contains("not signed by the root"), "{e}");
}

#[test]
fn roots_rotate_only_through_a_chain_and_new_prefixes_need_a_voucher() {
    let mut r = Repo::new();
    let mut pins = r.pins();
    let new_root = key("root2");
    let next = Root { prefix: "reg:5000/team".into(), version: 2, key: new_root.public() };
    // Signed by the new key alone: not a chain.
    let mut alone = r.roots.clone();
    alone.push(Signed::sign(next.clone(), &[&new_root]).unwrap());
    assert!(pins.learn_roots(&alone).is_err());
    let mut chain = r.roots.clone();
    chain.push(Signed::sign(next, &[&r.root, &new_root]).unwrap());
    assert!(pins.learn_roots(&chain).unwrap());
    assert_eq!(pins.root_for(REPO).unwrap().key, new_root.public());
    // The delegations signed by the old root no longer hold.
    r.roots = chain;
    let b = r.bundle(NOW + 100);
    let e = refusal(pins.check(REPO, Some("1.0"), None, Some(&b), NOW));
    assert!(e.contains("not signed by the root"), "{e}");
    r.root = new_root;
    r.delegate();
    let b = r.bundle(NOW + 100);
    pins.check(REPO, Some("1.0"), None, Some(&b), NOW).unwrap().unwrap();
    // A replacement root for the prefix that skips the pinned one.
    let evil = key("evil");
    let fake = vec![Signed::sign(
        Root { prefix: "reg:5000/team".into(), version: 1, key: evil.public() },
        &[&evil],
    )
    .unwrap()];
    assert!(!pins.learn_roots(&fake).unwrap(), "an older chain changes nothing");
    let mut longer = fake.clone();
    longer.push(
        Signed::sign(
            Root { prefix: "reg:5000/team".into(), version: 2, key: evil.public() },
            &[&evil],
        )
        .unwrap(),
    );
    longer.push(
        Signed::sign(
            Root { prefix: "reg:5000/team".into(), version: 3, key: evil.public() },
            &[&evil],
        )
        .unwrap(),
    );
    let e = pins.learn_roots(&longer).unwrap_err().to_string();
    assert!(e.contains("does not descend"), "{e}");
    // A new prefix: refused unless a pinned root vouches for it.
    let other = key("other-root");
    let doc = Root { prefix: "reg:5000/other".into(), version: 1, key: other.public() };
    let unvouched = vec![Signed::sign(doc.clone(), &[&other]).unwrap()];
    let e = pins.learn_roots(&unvouched).unwrap_err().to_string();
    assert!(e.contains("vouched"), "{e}");
    let vouched = vec![Signed::sign(doc, &[&other, &r.root]).unwrap()];
    assert!(pins.learn_roots(&vouched).unwrap());
}

#[test]
fn requiring_trust_sticks_until_a_root_signs_it_off() {
    let r = Repo::new();
    let mut pins = r.pins();
    assert!(pins.learn_policy(false, None).is_err());
    assert!(pins.required);
    let off = Signed::sign(Policy { required: false, version: 1 }, &[&key("mallory")]).unwrap();
    assert!(pins.learn_policy(false, Some(&off)).is_err());
    let off = Signed::sign(Policy { required: false, version: 1 }, &[&r.root]).unwrap();
    assert!(pins.learn_policy(false, Some(&off)).unwrap());
    assert!(!pins.required);
    assert_eq!(pins.check(REPO, Some("9"), None, None, NOW), Ok(None));
    pins.learn_policy(true, None).unwrap();
    let e = pins.learn_policy(false, Some(&off)).unwrap_err().to_string();
    assert!(e.contains("not newer"), "{e}");
}

#[test]
fn pins_survive_a_restart_and_prefixes_cover_paths_below() {
    let r = Repo::new();
    let pins = r.pins();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trust/pins.json");
    pins.save(&path).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(Pins::load(&path).unwrap(), pins);
    assert_eq!(Pins::load(&dir.path().join("none")).unwrap(), Pins::default());
    std::fs::write(&path, b"{").unwrap();
    assert!(Pins::load(&path).is_err());
    assert!(covers("reg:5000/team", "reg:5000/team/app"));
    assert!(covers("reg:5000/team/", "reg:5000/team"));
    assert!(!covers("reg:5000/team", "reg:5000/teamster/app"));
}

proptest::proptest! {
    /// Documents from arbitrary bytes never panic the parser, and whatever parses verifies
    /// only if it was signed.
    #[test]
    fn garbage_bundles_are_refused_cleanly(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
        let _ = Bundle::from_bytes(&bytes);
        let _ = Signed::<Root>::from_bytes(&bytes);
    }
}
