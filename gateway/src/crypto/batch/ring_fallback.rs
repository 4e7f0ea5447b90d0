//! Single packets through ring, for groups too small to fill enough vector lanes to beat it
//! (and for everything on CPUs without a vector path). Same contract as the vector paths: a
//! packet that fails to open has its output zeroed.

use super::engine::{CoreJob, TagSlot};
use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, CHACHA20_POLY1305};

pub(crate) fn process(j: &mut CoreJob<'_>) {
    // CHACHA20_POLY1305 takes exactly 32 bytes, which `j.key`'s type guarantees.
    let Ok(unbound) = UnboundKey::new(&CHACHA20_POLY1305, j.key) else {
        j.ok = false;
        return;
    };
    let key = LessSafeKey::new(unbound);
    let nonce = Nonce::assume_unique_for_key(j.nonce);
    let aad = Aad::from(j.aad);
    let data = j.text.prepare_in_place();
    j.ok = match &mut j.tag {
        TagSlot::Write(out) => match key.seal_in_place_separate_tag(nonce, aad, data) {
            Ok(tag) => {
                out.copy_from_slice(tag.as_ref());
                true
            }
            Err(_) => false,
        },
        TagSlot::Check(want) => key
            .open_in_place_separate_tag(nonce, aad, Tag::from(*want), data, 0..)
            .is_ok(),
    };
    if !j.ok {
        j.text.zero_output();
    }
}
