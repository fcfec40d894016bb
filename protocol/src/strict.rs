//! Strict archive validation: a message's archive must cover its payload exactly.
//!
//! rkyv finds an archive's root at the *end* of the buffer and checks only the bytes the root and
//! its out-of-line data claim; bytes that nothing claims are ignored. A hostile client can then
//! prepend junk to a valid payload and have it accepted (a 9-byte input payload whose archive is
//! 5 bytes long was executed). This validator is rkyv's `ArchiveValidator` with one more rule:
//! when an object's subtree is done, its out-of-line data must have filled every byte between the
//! end of the previous subtree and the object itself. The format is unaligned (no padding ever),
//! and rkyv's serializer writes each object's children in the order they are validated, right
//! before the object, so a canonical archive satisfies the rule and an archive with any unclaimed
//! byte (in front, or between two subtrees) does not. A fixed-size message must therefore arrive
//! at exactly its archived size.

use core::{alloc::Layout, fmt, marker::PhantomData, ops::Range};

use rkyv::{
    rancor::{Source, Strategy},
    validation::{ArchiveContext, Validator, shared::SharedValidator},
};

/// How deep subtrees may nest before validation gives up (rkyv's high-level API has no limit;
/// a hostile archive of nested boxes could otherwise recurse as deep as the payload allows).
const MAX_SUBTREE_DEPTH: usize = 256;

/// The validator frames are checked with: [`StrictArchiveValidator`] plus rkyv's shared-pointer
/// validator.
pub type StrictValidator<'a, E> =
    Strategy<Validator<StrictArchiveValidator<'a>, SharedValidator>, E>;

/// rkyv's archive validator, refusing archives that leave any byte of the buffer unclaimed.
#[derive(Debug)]
pub struct StrictArchiveValidator<'a> {
    /// The buffer's address: errors report offsets into the payload, never addresses.
    base: usize,
    /// The bytes the current subtree's children may still claim; its start is the end of the
    /// last subtree validated at this level, its end the current object's own bytes.
    subtree_range: Range<usize>,
    depth: usize,
    _bytes: PhantomData<&'a [u8]>,
}

impl<'a> StrictArchiveValidator<'a> {
    /// A validator for `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        let Range { start, end } = bytes.as_ptr_range();
        StrictArchiveValidator {
            base: start as usize,
            subtree_range: start as usize..end as usize,
            depth: 0,
            _bytes: PhantomData,
        }
    }
}

/// A validator for `bytes` with shared-pointer checks, ready for `rkyv::api::access_pos_with_context`.
pub(crate) fn validator(bytes: &[u8]) -> Validator<StrictArchiveValidator<'_>, SharedValidator> {
    Validator::new(StrictArchiveValidator::new(bytes), SharedValidator::new())
}

#[derive(Debug)]
struct OutOfRange {
    offset: isize,
    size: usize,
    allowed: Range<usize>,
}

impl fmt::Display for OutOfRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "subtree pointer overran range: offset {} size {} outside {}..{}",
            self.offset, self.size, self.allowed.start, self.allowed.end
        )
    }
}

impl std::error::Error for OutOfRange {}

#[derive(Debug)]
struct Misaligned {
    offset: usize,
    align: usize,
}

impl fmt::Display for Misaligned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "subtree pointer at offset {} is not aligned to {}",
            self.offset, self.align
        )
    }
}

impl std::error::Error for Misaligned {}

#[derive(Debug)]
struct Unclaimed {
    bytes: usize,
}

impl fmt::Display for Unclaimed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.bytes {
            1 => f.write_str("1 byte of the payload belongs to no part of the archive"),
            bytes => write!(
                f,
                "{bytes} bytes of the payload belong to no part of the archive"
            ),
        }
    }
}

impl std::error::Error for Unclaimed {}

#[derive(Debug)]
struct OutOfOrder;

impl fmt::Display for OutOfOrder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("subtree range popped out of order")
    }
}

impl std::error::Error for OutOfOrder {}

#[derive(Debug)]
struct TooDeep;

impl fmt::Display for TooDeep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "subtrees nest deeper than {MAX_SUBTREE_DEPTH}")
    }
}

impl std::error::Error for TooDeep {}

// SAFETY: `check_subtree_ptr` succeeds only when `[ptr, ptr + size)` lies within the current
// subtree range and `ptr` is aligned for the layout; that range starts as the validated buffer
// and is only ever narrowed by `push_subtree_range` or restored to what it returned, exactly as in
// rkyv's `ArchiveValidator`, so every pointer it admits points into the buffer. The extra
// refusal on pop can only reject more archives, never admit one rkyv's validator would not.
unsafe impl<E: Source> ArchiveContext<E> for StrictArchiveValidator<'_> {
    fn check_subtree_ptr(&mut self, ptr: *const u8, layout: &Layout) -> Result<(), E> {
        let start = ptr as usize;
        let end = start.wrapping_add(layout.size());
        if end < start || start < self.subtree_range.start || end > self.subtree_range.end {
            return Err(E::new(OutOfRange {
                offset: (start as isize).wrapping_sub(self.base as isize),
                size: layout.size(),
                allowed: self.subtree_range.start - self.base..self.subtree_range.end - self.base,
            }));
        }
        if start & (layout.align() - 1) != 0 {
            return Err(E::new(Misaligned {
                offset: start - self.base,
                align: layout.align(),
            }));
        }
        Ok(())
    }

    unsafe fn push_subtree_range(
        &mut self,
        root: *const u8,
        end: *const u8,
    ) -> Result<Range<usize>, E> {
        if self.depth == MAX_SUBTREE_DEPTH {
            return Err(E::new(TooDeep));
        }
        self.depth += 1;
        // What follows this object at its level, to restore when it is done.
        let after = end as usize..self.subtree_range.end;
        // Its children lie before it.
        self.subtree_range.end = root as usize;
        Ok(after)
    }

    unsafe fn pop_subtree_range(&mut self, range: Range<usize>) -> Result<(), E> {
        if range.start < self.subtree_range.end {
            return Err(E::new(OutOfOrder));
        }
        // The object's children must have filled everything up to the object itself.
        let unclaimed = self.subtree_range.end - self.subtree_range.start;
        if unclaimed != 0 {
            return Err(E::new(Unclaimed { bytes: unclaimed }));
        }
        self.subtree_range = range;
        self.depth -= 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use rkyv::{Archive, Serialize, rancor::Error};

    use super::validator;

    #[derive(Archive, Serialize)]
    struct Pair {
        a: Vec<u8>,
        b: Vec<u8>,
    }

    #[derive(Archive, Serialize)]
    struct Leaf {
        names: Vec<String>,
        // A box is its own out-of-line subtree, which is what this shape tests.
        #[allow(clippy::box_collection)]
        tag: Option<Box<String>>,
    }

    #[derive(Archive, Serialize)]
    enum Shape {
        Empty,
        Named(String),
        Nested {
            rows: Vec<Vec<String>>,
            next: Option<Box<Leaf>>,
        },
    }

    fn strict<T>(bytes: &[u8]) -> Result<(), Error>
    where
        T: rkyv::Portable + for<'a> rkyv::bytecheck::CheckBytes<super::StrictValidator<'a, Error>>,
    {
        let root = rkyv::api::root_position::<T>(bytes.len());
        rkyv::api::access_pos_with_context::<T, _, Error>(bytes, root, &mut validator(bytes))
            .map(drop)
    }

    #[test]
    fn canonical_archives_of_every_shape_are_accepted() {
        let shapes = [
            Shape::Empty,
            Shape::Named("inline".into()),
            Shape::Named("a name too long to be stored inline".into()),
            Shape::Nested {
                rows: vec![],
                next: None,
            },
            Shape::Nested {
                rows: vec![
                    vec![],
                    vec!["x".into(), "a longer string, out of line".into()],
                ],
                next: Some(Box::new(Leaf {
                    names: vec!["deep and long enough to be out of line".into(), "s".into()],
                    tag: Some(Box::new("a boxed string, out of line".into())),
                })),
            },
        ];
        for shape in &shapes {
            let bytes = rkyv::to_bytes::<Error>(shape).unwrap();
            strict::<ArchivedShape>(&bytes).unwrap();
        }
        let bytes = rkyv::to_bytes::<Error>(&Pair {
            a: vec![],
            b: vec![1, 2, 3],
        })
        .unwrap();
        strict::<ArchivedPair>(&bytes).unwrap();
    }

    #[test]
    fn junk_before_the_archive_is_refused() {
        let bytes =
            rkyv::to_bytes::<Error>(&Shape::Named("a name too long to be inline".into())).unwrap();
        let mut junk = vec![0xAA; 4];
        junk.extend_from_slice(&bytes);
        let error = strict::<ArchivedShape>(&junk).unwrap_err();
        assert_eq!(
            error.to_string(),
            "4 bytes of the payload belong to no part of the archive"
        );
        // rkyv's own validator finds nothing wrong with it.
        assert!(rkyv::access::<ArchivedShape, Error>(&junk).is_ok());
    }

    #[test]
    fn junk_between_two_subtrees_is_refused() {
        let pair = Pair {
            a: vec![1; 8],
            b: vec![2; 8],
        };
        let bytes = rkyv::to_bytes::<Error>(&pair).unwrap().to_vec();
        // [a's 8 bytes][b's 8 bytes][a: offset, len][b: offset, len]: put 3 bytes between a's and
        // b's data; a's relative offset grows by 3, b's stays as it was.
        let mut gapped = bytes[..8].to_vec();
        gapped.extend_from_slice(&[0xEE; 3]);
        gapped.extend_from_slice(&bytes[8..]);
        let a_offset_at = gapped.len() - 16;
        let offset = i32::from_le_bytes(gapped[a_offset_at..a_offset_at + 4].try_into().unwrap());
        gapped[a_offset_at..a_offset_at + 4].copy_from_slice(&(offset - 3).to_le_bytes());
        assert!(
            rkyv::access::<ArchivedPair, Error>(&gapped).is_ok(),
            "rkyv's own validator accepts the gap"
        );
        let error = strict::<ArchivedPair>(&gapped).unwrap_err();
        assert_eq!(
            error.to_string(),
            "3 bytes of the payload belong to no part of the archive"
        );
    }

    #[test]
    fn a_fixed_size_archive_must_arrive_at_exactly_its_size() {
        #[derive(Archive, Serialize)]
        struct Input {
            frame: u32,
            buttons: u8,
        }
        let bytes = rkyv::to_bytes::<Error>(&Input {
            frame: 7,
            buttons: 3,
        })
        .unwrap();
        assert_eq!(bytes.len(), 5);
        strict::<ArchivedInput>(&bytes).unwrap();
        let mut padded = vec![0; 4];
        padded.extend_from_slice(&bytes);
        assert!(strict::<ArchivedInput>(&padded).is_err());
        assert!(strict::<ArchivedInput>(&bytes[1..]).is_err(), "too short");
    }
}
