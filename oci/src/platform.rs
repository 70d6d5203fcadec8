//! Platforms (`os/arch[/variant]`): which child of an index a client or node takes.

use crate::manifest::Descriptor;

/// This machine's platform in OCI terms (`linux/amd64`, `linux/arm64`, …): Rust's names for
/// architectures differ from Go's, which image indexes use.
pub fn host() -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    };
    format!("linux/{arch}")
}

/// Whether an index child is for `want` (`os/arch[/variant]`; no variant matches any).
pub fn matches(d: &Descriptor, want: &str) -> bool {
    let Some(p) = &d.platform else { return false };
    let mut parts = want.split('/');
    let (os, arch, variant) = (parts.next(), parts.next(), parts.next());
    p["os"].as_str() == os
        && p["architecture"].as_str() == arch
        && (variant.is_none() || p["variant"].as_str() == variant)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn children_match_by_os_arch_and_variant() {
        let d: Descriptor = serde_json::from_str(
            r#"{"mediaType":"x","digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":0,
                "platform":{"os":"linux","architecture":"arm64","variant":"v8"}}"#,
        )
        .unwrap();
        assert!(matches(&d, "linux/arm64"));
        assert!(matches(&d, "linux/arm64/v8"));
        assert!(!matches(&d, "linux/arm64/v7"));
        assert!(!matches(&d, "linux/amd64"));
        assert!(host().starts_with("linux/"));
    }
}
