//! Version ordering for "is this an upgrade?": dot/dash separated parts,
//! numeric parts compared as numbers (so 1.10 > 1.9), other parts as text.
//! A version that is a prefix of another is older (1.2 < 1.2.1).

use std::cmp::Ordering;

pub fn compare(a: &str, b: &str) -> Ordering {
    let parts = |v: &str| -> Vec<String> {
        v.trim().trim_start_matches('v').split(['.', '-', '+']).map(str::to_string).collect()
    };
    let (pa, pb) = (parts(a), parts(b));
    for (x, y) in pa.iter().zip(pb.iter()) {
        let ord = match (x.parse::<u64>(), y.parse::<u64>()) {
            (Ok(nx), Ok(ny)) => nx.cmp(&ny),
            // A number sorts after text, so 1.0.0 > 1.0.rc1.
            (Ok(_), Err(_)) => Ordering::Greater,
            (Err(_), Ok(_)) => Ordering::Less,
            (Err(_), Err(_)) => x.cmp(y),
        };
        if ord != Ordering::Equal {
            return ord;
        }
    }
    pa.len().cmp(&pb.len())
}

#[cfg(test)]
mod tests {
    use super::compare;
    use std::cmp::Ordering::*;

    #[test]
    fn orders_like_release_numbers() {
        for (a, b, want) in [
            ("1.0.0", "1.0.0", Equal),
            ("1.0.1", "1.0.0", Greater),
            ("1.10.0", "1.9.9", Greater),
            ("2", "1.99", Greater),
            ("1.2", "1.2.1", Less),
            ("v2.0.0", "2.0.0", Equal),
            ("1.0.0", "1.0.rc1", Greater),
            ("2026.11.1", "2026.2.9", Greater),
        ] {
            assert_eq!(compare(a, b), want, "{a} vs {b}");
            assert_eq!(compare(b, a), want.reverse(), "{b} vs {a}");
        }
    }
}
