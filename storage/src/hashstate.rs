//! SHA-256 state saved between chunks of an upload.
//!
//! Saving the state after every chunk lets a chunked upload continue on a restarted registry
//! (or, later, another replica) without reading back what was already received, and lets the
//! final PUT verify the digest without re-reading the blob.
//!
//! Format: one version byte ([`FORMAT_V1`]) followed by sha2 0.11's serialized state. An
//! unknown version or a state of the wrong length restores as `None`, and the caller re-hashes
//! the staged parts instead: slower, never wrong.

use sha2::digest::common::hazmat::{SerializableState, SerializedState};
use sha2::Sha256;

/// Version byte of the current format.
pub const FORMAT_V1: u8 = 1;

/// Serializes `h`'s state, version byte first.
pub fn save(h: &Sha256) -> Vec<u8> {
    let state = h.serialize();
    let mut out = Vec::with_capacity(1 + state.len());
    out.push(FORMAT_V1);
    out.extend_from_slice(&state);
    out
}

/// Restores a state written by [`save`]; `None` when it cannot be trusted.
pub fn restore(bytes: &[u8]) -> Option<Sha256> {
    let (&version, rest) = bytes.split_first()?;
    if version != FORMAT_V1 {
        return None;
    }
    let state = SerializedState::<Sha256>::try_from(rest).ok()?;
    Sha256::deserialize(&state).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest as _;

    #[test]
    fn round_trip_mid_block() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let mut h = Sha256::new();
        h.update(&data[..333]);
        let saved = save(&h);
        let mut restored = restore(&saved).expect("restores");
        restored.update(&data[333..]);
        assert_eq!(restored.finalize(), Sha256::digest(&data));
    }

    #[test]
    fn refuses_unknown_state() {
        assert!(restore(&[]).is_none());
        assert!(restore(&[2, 0, 0]).is_none());
        let mut s = save(&Sha256::new());
        s.pop();
        assert!(restore(&s).is_none());
    }
}
