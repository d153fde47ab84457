//! Names of the objects the controller creates for a CodeSource. Kubernetes limits
//! names and label values; these functions keep within the limits deterministically.

use sha2::{Digest as _, Sha256};

/// Longest label value (and Job name: its pods carry it in the `job-name` label).
pub const MAX_LABEL: usize = 63;
/// Longest DNS subdomain name (ServiceAccount, Role, RoleBinding).
pub const MAX_SUBDOMAIN: usize = 253;

/// `<codesource>-<8 hex>` from the launch's name seed: the inputs hash itself for an
/// ordinary launch, or a seed that also names the trigger for manual and retry launches.
/// The CodeSource part is shortened so the whole name fits in 63 characters.
pub fn job_name(codesource: &str, name_seed: &str) -> String {
    let suffix = if name_seed.len() >= 8 && name_seed.bytes().all(|b| b.is_ascii_hexdigit()) {
        name_seed[..8].to_ascii_lowercase()
    } else {
        short_hash(name_seed)
    };
    format!("{}-{suffix}", trim_to(codesource, MAX_LABEL - 9))
}

/// Name of the worker's ServiceAccount, Role and RoleBinding for a CodeSource.
pub fn worker_identity(codesource: &str) -> String {
    let prefix = "openvox-code-worker-";
    format!(
        "{prefix}{}",
        trim_to(codesource, MAX_SUBDOMAIN - prefix.len())
    )
}

/// A label value naming the CodeSource: its name when short enough, otherwise a
/// shortened name with a hash of the whole (objects are matched by owner reference too).
pub fn codesource_label(codesource: &str) -> String {
    if codesource.len() <= MAX_LABEL {
        codesource.to_string()
    } else {
        format!(
            "{}-{}",
            trim_to(codesource, MAX_LABEL - 9),
            short_hash(codesource)
        )
    }
}

fn short_hash(s: &str) -> String {
    hex::encode(&Sha256::digest(s.as_bytes())[..4])
}

/// `s` cut to at most `max` bytes, without a trailing `-` or `.` (names must end
/// alphanumerically). Kubernetes names are ASCII, so byte cuts are character cuts.
fn trim_to(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].trim_end_matches(['-', '.'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_names_take_8_hex_of_the_inputs_hash() {
        assert_eq!(
            job_name("production", "7f3a9c1e0000aaaa"),
            "production-7f3a9c1e"
        );
    }

    #[test]
    fn job_names_of_other_seeds_are_hashed_and_stable() {
        let a = job_name("production", "abc/requested/2026");
        assert_eq!(a, job_name("production", "abc/requested/2026"));
        assert_ne!(a, job_name("production", "abc/requested/2027"));
        assert_eq!(a.len(), "production-".len() + 8);
    }

    #[test]
    fn long_codesource_names_are_cut_to_fit_63_characters() {
        let long = "a".repeat(100);
        let name = job_name(&long, "0123456789abcdef");
        assert_eq!(name.len(), 63);
        assert!(name.ends_with("-01234567"));
        let dashed = format!("{}-{}", "b".repeat(53), "c".repeat(20));
        assert!(!job_name(&dashed, "0123456789abcdef").contains("--"));
    }

    #[test]
    fn label_values_fit_and_stay_distinct() {
        assert_eq!(codesource_label("prod"), "prod");
        let a = codesource_label(&format!("{}x", "a".repeat(70)));
        let b = codesource_label(&format!("{}y", "a".repeat(70)));
        assert!(a.len() <= MAX_LABEL && b.len() <= MAX_LABEL);
        assert_ne!(a, b);
    }

    #[test]
    fn worker_identities_fit_a_subdomain() {
        assert_eq!(worker_identity("prod"), "openvox-code-worker-prod");
        assert!(worker_identity(&"a".repeat(253)).len() <= MAX_SUBDOMAIN);
    }
}
