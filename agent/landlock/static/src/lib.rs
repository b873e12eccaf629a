//! The `shoal-landlock` helper as a static executable, built by this crate's build script. The
//! agent writes it out at start and binds it into tasks; embedding it keeps the helper and the
//! agent from the same build, so their command-line contract always matches.

/// The helper's executable image (static, stripped).
pub static HELPER: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/shoal-landlock"));

#[cfg(test)]
mod tests {
    #[test]
    fn the_helper_is_a_static_executable() {
        let elf = super::HELPER;
        assert_eq!(&elf[..4], b"\x7fELF");
        // A dynamically linked executable has a PT_INTERP program header naming its loader.
        let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
        let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap()) as usize;
        let (size, count) = (u16_at(0x36), u16_at(0x38));
        const PT_INTERP: u32 = 3;
        let interp = (0..count).any(|i| {
            let at = phoff + i * size;
            u32::from_le_bytes(elf[at..at + 4].try_into().unwrap()) == PT_INTERP
        });
        assert!(count > 0 && !interp, "the helper must be static");
    }
}
