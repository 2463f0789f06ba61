//! Which bytes a `Range` header asks for (RFC 9110 §14), for one file of
//! known size. Pure.
//!
//! Only single `bytes` ranges are served as ranges: that is what RAUC's
//! streaming client sends. A multi-range request, another unit or a header
//! that does not parse is ignored and the whole file is served (200), which
//! RFC 9110 allows ("a server MAY ignore the Range header field").

/// What to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Span {
    /// 200, the whole file.
    Whole,
    /// 206, bytes `start..=end` (inclusive, as in Content-Range).
    Part { start: u64, end: u64 },
    /// 416 with `Content-Range: bytes */size`.
    Unsatisfiable,
}

impl Span {
    /// Bytes to send for a file of `size`: (offset, length).
    pub fn bytes(self, size: u64) -> (u64, u64) {
        match self {
            Self::Whole => (0, size),
            Self::Part { start, end } => (start, end - start + 1),
            Self::Unsatisfiable => (0, 0),
        }
    }
}

pub fn resolve(header: Option<&str>, size: u64) -> Span {
    let Some(value) = header else { return Span::Whole };
    let value = value.trim();
    let Some((unit, spec)) = value.split_once('=') else { return Span::Whole };
    if !unit.trim().eq_ignore_ascii_case("bytes") || spec.contains(',') {
        return Span::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else { return Span::Whole };
    let (first, last) = (first.trim(), last.trim());
    let number = |s: &str| if s.bytes().all(|b| b.is_ascii_digit()) { s.parse::<u64>().ok() } else { None };
    match (first.is_empty(), last.is_empty()) {
        // `-n`: the last n bytes.
        (true, false) => match number(last) {
            Some(0) => Span::Unsatisfiable,
            Some(_) if size == 0 => Span::Unsatisfiable,
            Some(n) => Span::Part { start: size - n.min(size), end: size - 1 },
            None => Span::Whole,
        },
        // `a-`: from a to the end.
        (false, true) => match number(first) {
            Some(a) if a >= size => Span::Unsatisfiable,
            Some(a) => Span::Part { start: a, end: size - 1 },
            None => Span::Whole,
        },
        // `a-b`
        (false, false) => match (number(first), number(last)) {
            (Some(a), Some(b)) if a > b => Span::Whole,
            (Some(a), Some(_)) if a >= size => Span::Unsatisfiable,
            (Some(a), Some(b)) => Span::Part { start: a, end: b.min(size - 1) },
            _ => Span::Whole,
        },
        (true, true) => Span::Whole,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_table() {
        use Span::*;
        let rows: &[(Option<&str>, u64, Span)] = &[
            (None, 100, Whole),
            (Some("bytes=0-0"), 100, Part { start: 0, end: 0 }),
            (Some("bytes=0-99"), 100, Part { start: 0, end: 99 }),
            (Some("bytes=10-19"), 100, Part { start: 10, end: 19 }),
            (Some("bytes=90-500"), 100, Part { start: 90, end: 99 }),
            (Some("bytes=99-99"), 100, Part { start: 99, end: 99 }),
            (Some("bytes=100-200"), 100, Unsatisfiable),
            (Some("bytes=50-"), 100, Part { start: 50, end: 99 }),
            (Some("bytes=100-"), 100, Unsatisfiable),
            (Some("bytes=-10"), 100, Part { start: 90, end: 99 }),
            (Some("bytes=-1000"), 100, Part { start: 0, end: 99 }),
            (Some("bytes=-0"), 100, Unsatisfiable),
            (Some("bytes=-5"), 0, Unsatisfiable),
            (Some("bytes=0-"), 0, Unsatisfiable),
            (Some("Bytes = 1-2"), 100, Part { start: 1, end: 2 }),
            // ignored: served whole
            (Some("bytes=0-1,5-6"), 100, Whole),
            (Some("bytes=5-1"), 100, Whole),
            (Some("items=0-1"), 100, Whole),
            (Some("bytes=a-b"), 100, Whole),
            (Some("bytes=+1-2"), 100, Whole),
            (Some("bytes=-"), 100, Whole),
            (Some("bytes"), 100, Whole),
            (Some("bytes=99999999999999999999-"), 100, Whole),
        ];
        for &(header, size, want) in rows {
            assert_eq!(resolve(header, size), want, "{header:?} of {size}");
        }
    }

    #[test]
    fn bytes_of_a_span() {
        assert_eq!(Span::Whole.bytes(100), (0, 100));
        assert_eq!(Span::Part { start: 10, end: 19 }.bytes(100), (10, 10));
    }
}
