//! The jobs a caller hands to the batch functions, and how each becomes the engine's
//! [`CoreJob`]: WireGuard jobs build the nonce from the counter and have no AAD.

use super::engine::{CoreJob, TagSlot, Text};
use super::ring_fallback;
use super::{BatchError, OpenError, KEY_LEN, MAX_TEXT_LEN, TAG_LEN};

/// WireGuard's 96-bit nonce: 32 zero bits, then the counter little-endian.
fn wg_nonce(counter: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    n
}

fn check_len(index: usize, text: usize, need: usize, got: usize) -> Result<(), BatchError> {
    if text > MAX_TEXT_LEN {
        return Err(BatchError::TooLong { index });
    }
    if got < need {
        return Err(BatchError::OutputTooShort { index, need, got });
    }
    Ok(())
}

/// The ciphertext and expected tag of a sealed packet, if it is long enough to have a tag.
fn split_sealed(sealed: &[u8]) -> Option<(&[u8], [u8; TAG_LEN])> {
    let ct_len = sealed.len().checked_sub(TAG_LEN)?;
    let (ct, tag) = sealed.split_at(ct_len);
    Some((ct, tag.try_into().ok()?))
}

/// What the batch driver needs from a job type.
pub(crate) trait Job {
    /// Refuse a malformed job before anything in the batch is touched.
    fn check(&self, index: usize) -> Result<(), BatchError>;
    /// Length of the text (plaintext or ciphertext without the tag); orders lane groups.
    fn text_len(&self) -> usize;
    /// The engine's view of the job, or `None` if it fails without work (too short to open).
    fn core(&mut self) -> Option<CoreJob<'_>>;
    /// Record the verdict.
    fn finish(&mut self, _ok: bool) {}
    /// Seal or open this one job through ring and record the verdict; whether it succeeded.
    fn ring(&mut self) -> bool {
        let ok = match self.core() {
            Some(mut c) => {
                ring_fallback::process(&mut c);
                c.ok
            }
            None => false,
        };
        self.finish(ok);
        ok
    }
}

/// Seal `input` into `output` (ciphertext, then the tag; `output` may be longer, the rest is
/// untouched).
#[derive(Debug)]
pub struct SealJob<'a> {
    pub key: &'a [u8; KEY_LEN],
    pub counter: u64,
    pub input: &'a [u8],
    pub output: &'a mut [u8],
}

impl<'a> SealJob<'a> {
    pub fn new(
        key: &'a [u8; KEY_LEN],
        counter: u64,
        input: &'a [u8],
        output: &'a mut [u8],
    ) -> Self {
        SealJob {
            key,
            counter,
            input,
            output,
        }
    }
}

impl Job for SealJob<'_> {
    fn text_len(&self) -> usize {
        self.input.len()
    }

    fn check(&self, index: usize) -> Result<(), BatchError> {
        let n = self.input.len();
        check_len(index, n, n.saturating_add(TAG_LEN), self.output.len())
    }

    fn core(&mut self) -> Option<CoreJob<'_>> {
        let n = self.input.len();
        let (ct, rest) = self.output.split_at_mut(n);
        Some(CoreJob {
            key: self.key,
            nonce: wg_nonce(self.counter),
            aad: &[],
            text: Text::Split(self.input, ct),
            tag: TagSlot::Write(rest.get_mut(..TAG_LEN)?.try_into().ok()?),
            ok: false,
        })
    }
}

/// Seal in place: `buf` is the plaintext followed by `TAG_LEN` bytes that receive the tag.
#[derive(Debug)]
pub struct SealInPlaceJob<'a> {
    pub key: &'a [u8; KEY_LEN],
    pub counter: u64,
    pub buf: &'a mut [u8],
}

impl<'a> SealInPlaceJob<'a> {
    pub fn new(key: &'a [u8; KEY_LEN], counter: u64, buf: &'a mut [u8]) -> Self {
        SealInPlaceJob { key, counter, buf }
    }
}

impl Job for SealInPlaceJob<'_> {
    fn text_len(&self) -> usize {
        self.buf.len().saturating_sub(TAG_LEN)
    }

    fn check(&self, index: usize) -> Result<(), BatchError> {
        let n = self.buf.len().saturating_sub(TAG_LEN);
        check_len(index, n, TAG_LEN, self.buf.len())
    }

    fn core(&mut self) -> Option<CoreJob<'_>> {
        let n = self.buf.len().checked_sub(TAG_LEN)?;
        let (text, tag) = self.buf.split_at_mut(n);
        Some(CoreJob {
            key: self.key,
            nonce: wg_nonce(self.counter),
            aad: &[],
            text: Text::InPlace(text),
            tag: TagSlot::Write(tag.try_into().ok()?),
            ok: false,
        })
    }

    fn ring(&mut self) -> bool {
        // `check` guaranteed room for the tag.
        crate::crypto::seal_in_place(self.key, self.counter, &[], self.buf);
        true
    }
}

/// Open `input` (ciphertext, then the tag) into `output` (at least `input.len() - TAG_LEN`
/// bytes; the rest is untouched).
#[derive(Debug)]
pub struct OpenJob<'a> {
    pub key: &'a [u8; KEY_LEN],
    pub counter: u64,
    pub input: &'a [u8],
    pub output: &'a mut [u8],
    result: Result<usize, OpenError>,
}

impl<'a> OpenJob<'a> {
    pub fn new(
        key: &'a [u8; KEY_LEN],
        counter: u64,
        input: &'a [u8],
        output: &'a mut [u8],
    ) -> Self {
        OpenJob {
            key,
            counter,
            input,
            output,
            result: Err(OpenError),
        }
    }

    /// The plaintext length if the tag verified. Until the job has been opened, an error.
    pub fn result(&self) -> Result<usize, OpenError> {
        self.result
    }
}

impl Job for OpenJob<'_> {
    fn text_len(&self) -> usize {
        self.input.len().saturating_sub(TAG_LEN)
    }

    fn check(&self, index: usize) -> Result<(), BatchError> {
        let n = self.input.len().saturating_sub(TAG_LEN);
        check_len(index, n, n, self.output.len())
    }

    fn core(&mut self) -> Option<CoreJob<'_>> {
        self.result = Err(OpenError);
        let (ct, tag) = split_sealed(self.input)?;
        Some(CoreJob {
            key: self.key,
            nonce: wg_nonce(self.counter),
            aad: &[],
            text: Text::Split(ct, &mut self.output[..ct.len()]),
            tag: TagSlot::Check(tag),
            ok: false,
        })
    }

    fn finish(&mut self, ok: bool) {
        self.result = if ok {
            Ok(self.input.len() - TAG_LEN)
        } else {
            Err(OpenError)
        };
    }
}

/// Open in place: `buf` is the ciphertext followed by the tag; on success the plaintext is
/// `buf[..result]`, on failure the ciphertext part is zeroed.
#[derive(Debug)]
pub struct OpenInPlaceJob<'a> {
    pub key: &'a [u8; KEY_LEN],
    pub counter: u64,
    pub buf: &'a mut [u8],
    result: Result<usize, OpenError>,
}

impl<'a> OpenInPlaceJob<'a> {
    pub fn new(key: &'a [u8; KEY_LEN], counter: u64, buf: &'a mut [u8]) -> Self {
        OpenInPlaceJob {
            key,
            counter,
            buf,
            result: Err(OpenError),
        }
    }

    /// The plaintext length if the tag verified. Until the job has been opened, an error.
    pub fn result(&self) -> Result<usize, OpenError> {
        self.result
    }
}

impl Job for OpenInPlaceJob<'_> {
    fn text_len(&self) -> usize {
        self.buf.len().saturating_sub(TAG_LEN)
    }

    fn check(&self, index: usize) -> Result<(), BatchError> {
        check_len(index, self.buf.len(), 0, 0)
    }

    fn core(&mut self) -> Option<CoreJob<'_>> {
        self.result = Err(OpenError);
        let n = self.buf.len().checked_sub(TAG_LEN)?;
        let (text, tag) = self.buf.split_at_mut(n);
        Some(CoreJob {
            key: self.key,
            nonce: wg_nonce(self.counter),
            aad: &[],
            text: Text::InPlace(text),
            tag: TagSlot::Check(<[u8; TAG_LEN]>::try_from(&*tag).ok()?),
            ok: false,
        })
    }

    fn finish(&mut self, ok: bool) {
        self.result = if ok {
            Ok(self.buf.len() - TAG_LEN)
        } else {
            Err(OpenError)
        };
    }

    fn ring(&mut self) -> bool {
        self.result = crate::crypto::open_in_place(self.key, self.counter, &[], self.buf);
        if self.result.is_err() {
            let n = self.buf.len().saturating_sub(TAG_LEN);
            self.buf[..n].fill(0);
        }
        self.result.is_ok()
    }
}

/// A general RFC 8439 job (any 96-bit nonce, any AAD), out of place. Sealing writes
/// ciphertext and tag to `output`; opening reads them from `input` and writes the plaintext.
#[derive(Debug)]
pub struct AeadJob<'a> {
    pub key: &'a [u8; KEY_LEN],
    pub nonce: [u8; 12],
    pub aad: &'a [u8],
    pub input: &'a [u8],
    pub output: &'a mut [u8],
    pub(super) sealing: bool,
    result: Result<usize, OpenError>,
}

impl<'a> AeadJob<'a> {
    pub fn new(
        key: &'a [u8; KEY_LEN],
        nonce: [u8; 12],
        aad: &'a [u8],
        input: &'a [u8],
        output: &'a mut [u8],
    ) -> Self {
        AeadJob {
            key,
            nonce,
            aad,
            input,
            output,
            sealing: true,
            result: Err(OpenError),
        }
    }

    /// After opening: the plaintext length if the tag verified.
    pub fn result(&self) -> Result<usize, OpenError> {
        self.result
    }
}

impl Job for AeadJob<'_> {
    fn text_len(&self) -> usize {
        match self.sealing {
            true => self.input.len(),
            false => self.input.len().saturating_sub(TAG_LEN),
        }
    }

    fn check(&self, index: usize) -> Result<(), BatchError> {
        let n = self.input.len();
        match self.sealing {
            true => check_len(index, n, n.saturating_add(TAG_LEN), self.output.len()),
            false => check_len(index, n, n.saturating_sub(TAG_LEN), self.output.len()),
        }
    }

    fn core(&mut self) -> Option<CoreJob<'_>> {
        self.result = Err(OpenError);
        let (text, tag) = if self.sealing {
            let (ct, rest) = self.output.split_at_mut(self.input.len());
            let tag = TagSlot::Write(rest.get_mut(..TAG_LEN)?.try_into().ok()?);
            (Text::Split(self.input, ct), tag)
        } else {
            let (ct, tag) = split_sealed(self.input)?;
            (
                Text::Split(ct, &mut self.output[..ct.len()]),
                TagSlot::Check(tag),
            )
        };
        Some(CoreJob {
            key: self.key,
            nonce: self.nonce,
            aad: self.aad,
            text,
            tag,
            ok: false,
        })
    }

    fn finish(&mut self, ok: bool) {
        let n = if self.sealing {
            self.input.len()
        } else {
            self.input.len().saturating_sub(TAG_LEN)
        };
        self.result = if ok { Ok(n) } else { Err(OpenError) };
    }
}
