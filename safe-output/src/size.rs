//! Sizes for people.

/// `n` bytes for people, rounded down so a size never reads larger than it
/// is: "512 bytes", "1.5 KiB", "64.0 MiB", "2.0 GiB", "15.9 MiB" for one
/// byte less than 16 MiB. Call it for sizes in messages and summaries.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} bytes");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{:.1} {}", (v * 10.0).floor() / 10.0, UNITS[unit])
}

/// [`human_bytes`] and, where that rounds, the exact count: "512 bytes",
/// "16.0 MiB (16777216 bytes)". Call it where the user may compare the
/// number with a limit they gave.
pub fn human_bytes_exact(n: u64) -> String {
    if n < 1024 {
        human_bytes(n)
    } else {
        format!("{} ({n} bytes)", human_bytes(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_bytes_reads_well() {
        assert_eq!(human_bytes(0), "0 bytes");
        assert_eq!(human_bytes(1023), "1023 bytes");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(64 << 20), "64.0 MiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
        assert_eq!(human_bytes((16 << 20) - 1), "15.9 MiB");
        // Never "1024.0 KiB": one byte short of a MiB stays below it.
        assert_eq!(human_bytes((1 << 20) - 1), "1023.9 KiB");
        assert_eq!(human_bytes_exact(0), "0 bytes");
        assert_eq!(human_bytes_exact(16 << 20), "16.0 MiB (16777216 bytes)");
    }
}
