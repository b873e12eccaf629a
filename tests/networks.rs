//! Networks on an in-process cluster (real manager, Raft, sled and gRPC): what `network create`,
//! `ls`, `inspect` and `rm` give a user, the subnets and VNIs the managers hand out, the
//! virtual IPs services get, and that concurrent allocations never share an address.

use std::collections::BTreeSet;
use std::time::Duration;

use shoal::node::daemon::InitOptions;
use shoal_proto::*;
use shoal_testkit::cluster::TestNode;
use shoal_testkit::poll::eventually;
use tonic::Code;

const BEAT: Duration = Duration::from_millis(200);

async fn manager(name: &str) -> TestNode {
    let m = TestNode::start(name).await;
    m.init(BEAT, None).await;
    m
}

fn net_spec(name: &str, subnet: &str) -> NetworkSpec {
    NetworkSpec {
        name: name.into(),
        ipam: Some(IpamConfig { subnet: subnet.into(), gateway: String::new() }),
        ..Default::default()
    }
}

async fn create_network(m: &TestNode, name: &str, subnet: &str) -> Result<Network, tonic::Status> {
    let req = CreateNetworkRequest { spec: Some(net_spec(name, subnet)) };
    Ok(m.control().await.create_network(req).await?.into_inner().network.unwrap())
}

fn service(name: &str, networks: &[&str]) -> ServiceSpec {
    ServiceSpec {
        name: name.into(),
        replicas: 0,
        container: Some(ContainerSpec { image: "busybox".into(), ..Default::default() }),
        networks: networks
            .iter()
            .map(|n| NetworkAttachmentConfig { target: n.to_string(), aliases: vec![] })
            .collect(),
        ..Default::default()
    }
}

async fn create_service(m: &TestNode, spec: ServiceSpec) -> Result<Service, tonic::Status> {
    let req = CreateServiceRequest { spec: Some(spec), ..Default::default() };
    Ok(m.control().await.create_service(req).await?.into_inner().service.unwrap())
}

fn vips(s: &Service) -> Vec<(String, String)> {
    let vips = s.endpoint.iter().flat_map(|e| e.vips.iter());
    vips.map(|v| (v.network_id.clone(), v.addr.clone())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn networks_take_their_own_subnet_and_vni_and_refuse_overlaps() {
    let m = manager("m").await;
    let front = create_network(&m, "front", "").await.unwrap();
    let back = create_network(&m, "back", "").await.unwrap();
    assert_eq!((front.subnet.as_str(), front.gateway.as_str()), ("10.0.0.0/24", "10.0.0.1"));
    assert_eq!(back.subnet, "10.0.1.0/24", "the pool's next block");
    assert_eq!((front.vni, back.vni), (4096, 4097));
    assert_eq!(front.spec.as_ref().unwrap().driver, "overlay");

    let mine = create_network(&m, "mine", "192.168.50.0/24").await.unwrap();
    assert_eq!(mine.gateway, "192.168.50.1");

    let again = create_network(&m, "front", "").await.unwrap_err();
    assert_eq!(again.code(), Code::AlreadyExists, "{again:?}");
    let overlap = create_network(&m, "wide", "10.0.0.0/16").await.unwrap_err();
    assert_eq!(overlap.code(), Code::InvalidArgument);
    assert!(overlap.message().contains("overlaps 10.0.0.0/24 of network front"), "{overlap:?}");
    let bad = create_network(&m, "bad", "10.9.9.9/24").await.unwrap_err();
    assert!(bad.message().contains("host bits"), "{bad:?}");
    let reserved = create_network(&m, "ingress", "").await.unwrap_err();
    assert!(reserved.message().contains("reserved"), "{reserved:?}");

    let listed = m.control().await.list_networks(ListNetworksRequest {}).await.unwrap();
    let names: Vec<String> = listed
        .into_inner()
        .networks
        .iter()
        .map(|n| n.spec.as_ref().unwrap().name.clone())
        .collect();
    assert_eq!(names, ["back", "front", "mine"]);
    let prefix = front.id[..6].to_string();
    let got = m.control().await.get_network(GetNetworkRequest { reference: prefix }).await;
    assert_eq!(got.unwrap().into_inner().network.unwrap().id, front.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_network_in_use_stays_and_addresses_come_back_when_services_leave() {
    let m = manager("m").await;
    let front = create_network(&m, "front", "10.50.0.0/29").await.unwrap();
    let web = create_service(&m, service("web", &["front"])).await.unwrap();
    assert_eq!(vips(&web), [(front.id.clone(), "10.50.0.2/29".to_string())]);
    assert_eq!(web.spec.as_ref().unwrap().networks[0].target, front.id, "stored by ID");

    let req = RemoveNetworkRequest { reference: "front".into() };
    let refused = m.control().await.remove_network(req.clone()).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(refused.message().contains("in use by web"), "{refused:?}");
    let inspect = GetNetworkRequest { reference: "front".into() };
    let shown = m.control().await.get_network(inspect).await.unwrap().into_inner();
    assert_eq!(shown.services, ["web"]);

    // A /29 has five addresses: the four others go, a sixth service finds none.
    for name in ["a", "b", "c", "d"] {
        create_service(&m, service(name, &["front"])).await.unwrap();
    }
    let full = create_service(&m, service("e", &["front"])).await.unwrap_err();
    assert_eq!(full.code(), Code::ResourceExhausted, "{full:?}");
    assert!(full.message().contains("no free address"), "{full:?}");
    // The failed create left nothing behind: its name is free again.
    let req = ListServicesRequest {};
    assert_eq!(m.control().await.list_services(req).await.unwrap().into_inner().services.len(), 5);

    // Taking web off the network gives its address to the next service.
    let mut spec = web.spec.clone().unwrap();
    spec.networks.clear();
    let req =
        UpdateServiceRequest { reference: "web".into(), spec: Some(spec), ..Default::default() };
    let web = m.control().await.update_service(req).await.unwrap().into_inner().service.unwrap();
    assert!(vips(&web).is_empty());
    let e = create_service(&m, service("e", &["front"])).await.unwrap();
    assert_eq!(vips(&e)[0].1, "10.50.0.2/29");

    for name in ["a", "b", "c", "d", "e", "web"] {
        let req = RemoveServiceRequest { reference: name.into() };
        m.control().await.remove_service(req).await.unwrap();
    }
    let req = RemoveNetworkRequest { reference: "front".into() };
    let gone = m.control().await.remove_network(req).await.unwrap().into_inner();
    assert_eq!(gone.id, front.id);
    let listed = m.control().await.list_networks(ListNetworksRequest {}).await.unwrap();
    assert!(listed.into_inner().networks.is_empty());
}

/// Addresses of `service`'s running tasks on their networks.
async fn task_addrs(m: &TestNode, service: &str) -> Vec<String> {
    let running = m.running(service).await;
    let tasks = running.values().flatten();
    tasks.flat_map(|t| t.networks.iter().map(|a| a.addr.clone())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_task_gets_its_own_address_and_gives_it_back_when_it_ends() {
    let m = manager("m").await;
    // A /28: gateway .1, then 13 addresses; each service's virtual IP takes one.
    let net = create_network(&m, "small", "10.60.0.0/28").await.unwrap();
    let mut spec = service("web", &["small"]);
    spec.replicas = 12;
    let web = create_service(&m, spec.clone()).await.unwrap();
    m.wait_running("web", 12, Duration::from_secs(20)).await;
    let addrs = task_addrs(&m, "web").await;
    let distinct: BTreeSet<&String> = addrs.iter().collect();
    assert_eq!(distinct.len(), 12, "every task its own address: {addrs:?}");
    assert!(!addrs.contains(&vips(&web)[0].1), "no task has the virtual IP");
    assert!(!addrs.iter().any(|a| a.starts_with("10.60.0.1/")), "no task has the gateway");
    let running = m.running("web").await;
    let attachment = &running.values().flatten().next().unwrap().networks[0];
    assert_eq!(attachment.network.as_ref().unwrap().vni, net.vni, "the task carries its network");

    // Scaled down to 2, ten addresses come back: a service of nine more tasks fits.
    spec.replicas = 2;
    let req = UpdateServiceRequest {
        reference: "web".into(),
        spec: Some(spec),
        version: 0,
        ..Default::default()
    };
    m.control().await.update_service(req).await.unwrap();
    m.wait_running("web", 2, Duration::from_secs(20)).await;
    let mut api = service("api", &["small"]);
    api.replicas = 9;
    eventually("the stopped tasks' addresses are free", Duration::from_secs(20), || async {
        match create_service(&m, api.clone()).await {
            Ok(_) => Ok(()),
            Err(e) => Err(e.message().to_string()),
        }
    })
    .await;
    m.wait_running("api", 9, Duration::from_secs(20)).await;
    let all: BTreeSet<String> =
        task_addrs(&m, "web").await.into_iter().chain(task_addrs(&m, "api").await).collect();
    assert_eq!(all.len(), 11, "no address is shared: {all:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dns_round_robin_service_has_no_virtual_ip_and_none_means_no_network() {
    let m = manager("m").await;
    create_network(&m, "back", "").await.unwrap();
    let mut spec = service("db", &["back"]);
    spec.endpoint = Some(EndpointSpec { mode: EndpointMode::Dnsrr as i32, ports: vec![] });
    let db = create_service(&m, spec).await.unwrap();
    assert!(vips(&db).is_empty(), "dnsrr: no virtual IP: {:?}", vips(&db));

    let alone = create_service(&m, service("alone", &["none"])).await.unwrap();
    assert!(vips(&alone).is_empty());
    let both = create_service(&m, service("both", &["none", "back"])).await.unwrap_err();
    assert_eq!(both.code(), Code::InvalidArgument);
    assert!(both.message().contains("cannot be combined"), "{both:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_allocations_never_share_an_address_a_subnet_or_a_vni() {
    let m = manager("m").await;
    create_network(&m, "shared", "").await.unwrap();
    let mut creates = Vec::new();
    for i in 0..16 {
        let control = m.control().await;
        creates.push(tokio::spawn(async move {
            let mut control = control;
            let spec = service(&format!("s{i}"), &["shared"]);
            control
                .create_service(CreateServiceRequest { spec: Some(spec), ..Default::default() })
                .await
        }));
    }
    let mut addrs = BTreeSet::new();
    for c in creates {
        let s = c.await.unwrap().unwrap().into_inner().service.unwrap();
        assert!(addrs.insert(vips(&s)[0].1.clone()), "address given twice: {:?}", vips(&s));
    }
    assert_eq!(addrs.len(), 16);

    let mut creates = Vec::new();
    for i in 0..8 {
        let control = m.control().await;
        creates.push(tokio::spawn(async move {
            let mut control = control;
            let req = CreateNetworkRequest { spec: Some(net_spec(&format!("n{i}"), "")) };
            control.create_network(req).await
        }));
    }
    let (mut subnets, mut vnis) = (BTreeSet::new(), BTreeSet::new());
    for c in creates {
        let n = c.await.unwrap().unwrap().into_inner().network.unwrap();
        assert!(subnets.insert(n.subnet.clone()), "subnet given twice: {}", n.subnet);
        assert!(vnis.insert(n.vni), "VNI given twice: {}", n.vni);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn swarm_init_sets_the_address_pool_networks_draw_from() {
    let m = TestNode::start("m").await;
    let bad = InitOptions {
        listen_addr: "127.0.0.1:0".into(),
        default_addr_pool: vec!["10.0.0.0/8".into(), "10.20.0.0/16".into()],
        ..Default::default()
    };
    let err = m.daemon.init(bad).await.unwrap_err();
    assert!(format!("{err:#}").contains("overlaps"), "{err:#}");
    let opts = InitOptions {
        listen_addr: "127.0.0.1:0".into(),
        heartbeat: Some(BEAT),
        default_addr_pool: vec!["172.30.0.0/16".into()],
        subnet_size: 26,
        data_path_port: 4790,
        ..Default::default()
    };
    m.daemon.init(opts).await.unwrap();
    let a = create_network(&m, "a", "").await.unwrap();
    let b = create_network(&m, "b", "").await.unwrap();
    assert_eq!((a.subnet.as_str(), b.subnet.as_str()), ("172.30.0.0/26", "172.30.0.64/26"));
    // The data-path port goes with every network, so nodes open VXLAN on it.
    assert_eq!((a.data_port, b.data_port), (4790, 4790));
}

/// The allocator's state is the store: a manager that becomes leader after the old one dies
/// hands out neither a subnet, a VNI nor an address that is already taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_leader_allocates_around_what_the_old_one_gave() {
    let mut ms = shoal_testkit::cluster::three_managers(BEAT).await;
    let a = create_network(&ms[0], "a", "").await.unwrap();
    let web = create_service(&ms[0], service("web", &["a"])).await.unwrap();
    let old_leader = ms.remove(0);
    old_leader.kill().await;
    let survivor = &ms[0];
    eventually("a new leader creates network b", Duration::from_secs(30), || async {
        match create_network(survivor, "b", "").await {
            Ok(_) => Ok(()),
            // A try whose answer was lost in the election may have created it.
            Err(e) if e.code() == Code::AlreadyExists => Ok(()),
            Err(e) => Err(e.message().to_string()),
        }
    })
    .await;
    let req = GetNetworkRequest { reference: "b".into() };
    let b = survivor.control().await.get_network(req).await.unwrap().into_inner().network.unwrap();
    assert_ne!(b.subnet, a.subnet);
    assert_ne!(b.vni, a.vni);
    let api = create_service(survivor, service("api", &["a"])).await.unwrap();
    assert_ne!(vips(&api)[0].1, vips(&web)[0].1, "web's address is still taken");
}

fn publishing(name: &str, ports: &[(u32, u32, &str, &str)]) -> ServiceSpec {
    let mut spec = service(name, &[]);
    let ports = ports
        .iter()
        .map(|&(published, target, protocol, mode)| PortConfig {
            published_port: published,
            target_port: target,
            protocol: protocol.into(),
            publish_mode: mode.into(),
            ..Default::default()
        })
        .collect();
    spec.endpoint = Some(EndpointSpec { ports, ..Default::default() });
    spec
}

fn published(s: &Service) -> Vec<(u32, String, String)> {
    let ports = s.endpoint.iter().flat_map(|e| e.ports.iter());
    ports.map(|p| (p.published_port, p.protocol.clone(), p.publish_mode.clone())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_published_port_is_the_clusters_and_comes_back_when_its_service_leaves() {
    let m = manager("m").await;
    let web = create_service(&m, publishing("web", &[(8080, 80, "", "")])).await.unwrap();
    assert_eq!(published(&web), [(8080, "tcp".into(), "ingress".into())], "defaults filled in");
    // The routing mesh's network now exists; users can neither make nor join one.
    let nets = m.control().await.list_networks(ListNetworksRequest {}).await.unwrap();
    let nets = nets.into_inner().networks;
    let ingress = nets.iter().find(|n| n.spec.as_ref().unwrap().ingress).expect("ingress");
    assert_eq!(ingress.spec.as_ref().unwrap().name, "ingress");
    let joined = create_service(&m, service("joiner", &["ingress"])).await.unwrap_err();
    assert!(joined.message().contains("reserved"), "{joined:?}");

    let taken = create_service(&m, publishing("api", &[(8080, 81, "tcp", "")])).await.unwrap_err();
    assert_eq!(taken.code(), Code::InvalidArgument);
    assert!(
        taken.message().contains("port 8080/tcp is already published by service web"),
        "{taken:?}"
    );
    // Host mode cannot take a port of the routing mesh either; UDP 8080 is another port.
    let host =
        create_service(&m, publishing("api", &[(8080, 81, "tcp", "host")])).await.unwrap_err();
    assert!(host.message().contains("already published by service web"), "{host:?}");
    create_service(&m, publishing("dns", &[(8080, 53, "udp", "")])).await.unwrap();
    // ...nor the mesh a port a service publishes in host mode.
    create_service(&m, publishing("edge", &[(9090, 90, "tcp", "host")])).await.unwrap();
    let mesh = create_service(&m, publishing("api", &[(9090, 81, "", "")])).await.unwrap_err();
    assert!(mesh.message().contains("already published by service edge"), "{mesh:?}");

    // No published port: the managers choose from 30000-32767, and keep the choice.
    let auto = create_service(&m, publishing("auto", &[(0, 80, "", "")])).await.unwrap();
    let auto2 = create_service(&m, publishing("auto2", &[(0, 80, "", "")])).await.unwrap();
    assert_eq!((published(&auto)[0].0, published(&auto2)[0].0), (30000, 30001));
    let mut spec = auto.spec.clone().unwrap();
    spec.labels.insert("changed".into(), "yes".into());
    let req =
        UpdateServiceRequest { reference: "auto".into(), spec: Some(spec), ..Default::default() };
    let auto = m.control().await.update_service(req).await.unwrap().into_inner().service.unwrap();
    assert_eq!(published(&auto)[0].0, 30000, "an update keeps the chosen port");

    // While services publish, the ingress network stays, naming them.
    let req = RemoveNetworkRequest { reference: "ingress".into() };
    let refused = m.control().await.remove_network(req).await.unwrap_err();
    assert!(refused.message().contains("auto, auto2, dns, web"), "{refused:?}");

    // Removing a service frees its port for the next one.
    let req = RemoveServiceRequest { reference: "web".into() };
    m.control().await.remove_service(req).await.unwrap();
    let api = create_service(&m, publishing("api", &[(8080, 81, "", "")])).await.unwrap();
    assert_eq!(published(&api)[0].0, 8080);
    // Malformed ports are refused with what is wrong.
    let bad = create_service(&m, publishing("bad", &[(70000, 80, "", "")])).await.unwrap_err();
    assert!(bad.message().contains("1 to 65535"), "{bad:?}");
}

/// The nodes that hold an address on the ingress network (the store's claims).
async fn mesh_nodes(m: &TestNode, ingress: &str) -> BTreeSet<String> {
    let manager = m.daemon.manager().await.expect("a manager");
    let claims = manager.store().list_under::<NameClaim>(&format!("ip/{ingress}/")).unwrap();
    claims.into_iter().filter_map(|c| c.owner.strip_prefix("node:").map(String::from)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_that_joins_after_the_mesh_exists_gets_its_address_on_it() {
    let m = manager("m").await;
    create_service(&m, publishing("web", &[(8080, 80, "", "")])).await.unwrap();
    let nets = m.control().await.list_networks(ListNetworksRequest {}).await.unwrap();
    let ingress = nets.into_inner().networks.into_iter().find(|n| n.spec.as_ref().unwrap().ingress);
    let ingress = ingress.expect("the mesh").id;
    let first = mesh_nodes(&m, &ingress).await;
    assert_eq!(first, BTreeSet::from([m.id().await]), "the manager's node is on the mesh");

    let w = TestNode::start("w").await;
    let token = shoal_testkit::cluster::worker_token(&m).await;
    let addr = m.nodes().await[0].addr.clone();
    w.join(&token, &addr).await.unwrap();
    let w_id = w.id().await;
    eventually("the new node has a mesh address", Duration::from_secs(10), || async {
        let now = mesh_nodes(&m, &ingress).await;
        now.contains(&w_id).then_some(()).ok_or(format!("{now:?}"))
    })
    .await;
}
