//! Bounds on what one build may read and write, so a hostile or broken repository or
//! Forge release fails with a clear message instead of filling a disk or the memory.

use std::fmt;

/// Limits applied while fetching, unpacking and assembling environments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Entries (files, directories, symlinks) in one environment, modules included.
    pub max_files_per_environment: u64,
    /// Size of one file. Git blobs are held in memory while they are written, so this
    /// also bounds the memory one file can take.
    pub max_file_bytes: u64,
    /// Sum of all file sizes of one environment, modules included.
    pub max_environment_bytes: u64,
    /// Size of one downloaded Forge release tarball (compressed).
    pub max_download_bytes: u64,
    /// Sum of the unpacked file sizes of one Forge release.
    pub max_module_bytes: u64,
    /// Entries of one unpacked Forge release.
    pub max_module_files: u64,
    /// Size of a Puppetfile.
    pub max_puppetfile_bytes: u64,
    /// Size of a Forge API answer (JSON).
    pub max_api_response_bytes: u64,
    /// The scratch space of the build (the worker pod's scratch volume): fetched packs,
    /// decoded blobs and layers must fit in it.
    pub max_scratch_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        const MIB: u64 = 1024 * 1024;
        Self {
            max_files_per_environment: 250_000,
            max_file_bytes: 100 * MIB,
            max_environment_bytes: 4096 * MIB,
            max_download_bytes: 512 * MIB,
            max_module_bytes: 2048 * MIB,
            max_module_files: 100_000,
            max_puppetfile_bytes: MIB,
            max_api_response_bytes: 8 * MIB,
            max_scratch_bytes: 8192 * MIB,
        }
    }
}

impl Limits {
    /// With a scratch space of `bytes`: one environment may take half of it (its
    /// layer and the blobs it is made of must fit beside the packs).
    pub fn with_scratch(mut self, bytes: u64) -> Self {
        self.max_scratch_bytes = bytes;
        self.max_environment_bytes = self.max_environment_bytes.min(bytes / 2);
        self
    }

    /// Whether fetched packs of `received` bytes leave room for the build: at most
    /// half the scratch space, the rest is for decoded blobs and layers.
    pub fn check_fetched(&self, received: u64) -> Result<(), String> {
        if received > self.max_scratch_bytes / 2 {
            return Err(format!(
                "the fetched branches take {} of the scratch space of {}; the rest of the build \
                 would not fit: raise spec.job.scratchSize, or build fewer branches per CodeSource",
                Bytes(received),
                Bytes(self.max_scratch_bytes)
            ));
        }
        Ok(())
    }

    /// Scratch space the blobs decoded from a fetch of `received` bytes may take: half
    /// of what the packs leave, the other half is for layers.
    pub fn decode_budget(&self, received: u64) -> u64 {
        self.max_scratch_bytes.saturating_sub(received) / 2
    }
}

/// A byte count printed for people: `512 B`, `3.4 KiB`, `41.0 MiB`, `1.20 GiB`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bytes(pub u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
        let n = self.0;
        if n < 1024 {
            return write!(f, "{n} B");
        }
        // Precision loss is fine: this is for reading, not for arithmetic.
        #[allow(clippy::cast_precision_loss)]
        let mut value = n as f64 / 1024.0;
        let mut unit = 0;
        while value >= 1024.0 && unit < UNITS.len() - 1 {
            value /= 1024.0;
            unit += 1;
        }
        if value >= 100.0 {
            write!(f, "{value:.0} {}", UNITS[unit])
        } else if value >= 10.0 {
            write!(f, "{value:.1} {}", UNITS[unit])
        } else {
            write!(f, "{value:.2} {}", UNITS[unit])
        }
    }
}

/// Parses a byte size as given on the command line: a plain number of bytes or a number
/// with one of the suffixes `K`, `M`, `G`, `T` (binary multiples, optional `i`/`iB`/`B`).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, suffix) = text.split_at(split);
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size (examples: 1048576, 512M, 4G)"))?;
    let shift = match suffix.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KI" | "KIB" | "KB" => 10,
        "M" | "MI" | "MIB" | "MB" => 20,
        "G" | "GI" | "GIB" | "GB" => 30,
        "T" | "TI" | "TIB" | "TB" => 40,
        _ => return Err(format!("{text:?} has an unknown unit (use K, M, G or T)")),
    };
    number
        .checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scratch_space_bounds_environments_fetches_and_decoding() {
        const GIB: u64 = 1 << 30;
        let limits = Limits::default().with_scratch(2 * GIB);
        assert_eq!(limits.max_environment_bytes, GIB);
        assert_eq!(
            Limits::default()
                .with_scratch(64 * GIB)
                .max_environment_bytes,
            Limits::default().max_environment_bytes,
            "a large scratch space does not raise the environment limit"
        );
        assert!(limits.check_fetched(GIB).is_ok());
        let err = limits.check_fetched(GIB + 1).unwrap_err();
        assert!(
            err.contains("1.00 GiB of the scratch space of 2.00 GiB"),
            "{err}"
        );
        assert!(err.contains("spec.job.scratchSize"), "{err}");
        assert_eq!(limits.decode_budget(GIB), GIB / 2);
        assert_eq!(limits.decode_budget(3 * GIB), 0);
    }

    #[test]
    fn bytes_are_printed_for_people() {
        let cases = [
            (0, "0 B"),
            (1023, "1023 B"),
            (1024, "1.00 KiB"),
            (1536, "1.50 KiB"),
            (41 * 1024 * 1024, "41.0 MiB"),
            (300 * 1024 * 1024, "300 MiB"),
            (5 * 1024 * 1024 * 1024, "5.00 GiB"),
        ];
        for (n, want) in cases {
            assert_eq!(Bytes(n).to_string(), want, "{n}");
        }
    }

    #[test]
    fn sizes_are_parsed_with_binary_units() {
        let cases = [
            ("123", Ok(123)),
            ("1K", Ok(1024)),
            ("512M", Ok(512 << 20)),
            ("4GiB", Ok(4 << 30)),
            ("2g", Ok(2 << 30)),
            ("12X", Err(())),
            ("M", Err(())),
            ("99999999999T", Err(())),
        ];
        for (text, want) in cases {
            assert_eq!(parse_bytes(text).map_err(|_| ()), want, "{text}");
        }
    }
}
