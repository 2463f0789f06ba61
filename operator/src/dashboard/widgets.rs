//! Small pieces every page uses: badges, times, the CSRF field, the
//! per-stage progress bar. All text goes through maud's escaping.

use super::guard::{Caller, CSRF_FIELD};
use harmony_protocol::time::UnixMillis;
use maud::{html, Markup};

/// A status pill; colour comes from `data-status` in the stylesheet.
pub fn badge(status: &str) -> Markup {
    html! { span.badge data-status=(status) { (status.replace('_', " ")) } }
}

pub fn csrf_field(caller: &Caller) -> Markup {
    html! { input type="hidden" name=(CSRF_FIELD) value=(caller.session.csrf); }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// `2026-11-28 17:31:02 UTC`
pub fn utc(at: UnixMillis) -> String {
    let secs = (at.0 / 1000) as i64;
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// `12 s ago`, `5 min ago`, `3 h ago`, `2 d ago`.
pub fn ago(at: UnixMillis, now: UnixMillis) -> String {
    let s = now.saturating_since(at) / 1000;
    match s {
        0..=89 => format!("{s} s ago"),
        90..=5399 => format!("{} min ago", (s + 30) / 60),
        5400..=172_799 => format!("{} h ago", (s + 1800) / 3600),
        _ => format!("{} d ago", s / 86_400),
    }
}

/// A time with its absolute value as a tooltip.
pub fn when(at: UnixMillis, now: UnixMillis) -> Markup {
    html! { time datetime=(at.0) title=(utc(at)) { (ago(at, now)) } }
}

pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// Whole-percent widths that sum to 100 (largest remainders get the
/// rounding), and a visible sliver for any stage with devices in it.
pub fn percents(counts: &[usize]) -> Vec<usize> {
    let total: usize = counts.iter().sum();
    if total == 0 {
        return vec![0; counts.len()];
    }
    let mut out: Vec<usize> = counts.iter().map(|c| c * 100 / total).collect();
    let mut rest = 100 - out.iter().sum::<usize>();
    let mut order: Vec<usize> = (0..counts.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(counts[i] * 100 % total));
    for &i in &order {
        if rest == 0 {
            break;
        }
        if counts[i] > 0 {
            out[i] += 1;
            rest -= 1;
        }
    }
    for (i, c) in counts.iter().enumerate() {
        if *c > 0 && out[i] == 0 {
            out[i] = 1;
        }
    }
    out
}

/// One bar, one segment per stage (`data-stage`, `data-count`), widths by
/// class (no style attributes: the CSP forbids inline style).
pub fn stage_bar(counts: &[(&str, usize)], small: bool) -> Markup {
    let widths = percents(&counts.iter().map(|(_, n)| *n).collect::<Vec<_>>());
    html! {
        div.progress.small[small] role="img" aria-label=(counts.iter().map(|(s, n)| format!("{s}: {n}")).collect::<Vec<_>>().join(", ")) {
            @for ((stage, n), w) in counts.iter().zip(widths) {
                div class={ "segment w-" (w) } data-stage=(stage) data-count=(n) title={ (stage.replace('_', " ")) ": " (n) } {}
            }
        }
    }
}

pub fn legend(stages: &[&str]) -> Markup {
    html! {
        div.legend {
            @for s in stages {
                span.key { span.swatch data-stage=(s) {} (s.replace('_', " ")) }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_durations_read_right() {
        assert_eq!(utc(UnixMillis(0)), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(UnixMillis(1_795_887_062_000)), "2026-11-28 17:31:02 UTC");
        assert_eq!(ago(UnixMillis(1000), UnixMillis(13_000)), "12 s ago");
        assert_eq!(bytes(1536), "1.5 KiB");
    }

    #[test]
    fn percents_sum_to_100_and_show_every_nonempty_stage() {
        let p = percents(&[1, 1, 1]);
        assert_eq!(p.iter().sum::<usize>(), 100);
        let p = percents(&[999, 1, 0]);
        assert!(p[1] >= 1 && p[2] == 0);
        assert_eq!(percents(&[0, 0]), vec![0, 0]);
    }
}
