//! Repository-name and tag grammar of the distribution spec.
//!
//! Written as small hand parsers rather than regexes: the grammar is tiny, and a name is checked
//! on every request.

/// Longest repository name we accept; distribution uses the same bound so that
/// `host/name` stays within 255 characters.
pub const MAX_NAME_LEN: usize = 255;

/// Why a repository name or tag is not valid.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum NameError {
    /// The repository name breaks `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/…)*`.
    #[error("invalid repository name {0:?}: use lowercase path components of [a-z0-9] joined by '.', '_', '__' or '-', separated by '/'")]
    Repository(String),
    /// The tag breaks `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
    #[error("invalid tag {0:?}: up to 128 characters of [A-Za-z0-9_.-], not starting with '.' or '-'")]
    Tag(String),
}

fn component_ok(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: ".", "_", "__", or one or more "-".
        let start = i;
        match b[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < b.len() && b[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < b.len() && b[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
        if i == start || i >= b.len() || !alnum(b[i]) {
            return false;
        }
    }
    true
}

/// Checks a repository name against the spec's grammar.
pub fn validate_repository(name: &str) -> Result<(), NameError> {
    if name.is_empty() || name.len() > MAX_NAME_LEN || !name.split('/').all(component_ok) {
        return Err(NameError::Repository(name.chars().take(300).collect()));
    }
    Ok(())
}

/// Checks a tag against the spec's grammar.
pub fn validate_tag(tag: &str) -> Result<(), NameError> {
    let b = tag.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|&x| x.is_ascii_alphanumeric() || matches!(x, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(NameError::Tag(tag.chars().take(200).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_names() {
        for ok in ["a", "library/busybox", "team/app", "a.b_c__d---e/f0", "0/1/2"] {
            assert_eq!(validate_repository(ok), Ok(()), "{ok}");
        }
        for bad in [
            "", "A", "a/", "/a", "a//b", "a_", "a___b", "-a", "a..b", "a:b", "a/../b", "a b",
        ] {
            assert!(validate_repository(bad).is_err(), "{bad}");
        }
        assert!(validate_repository(&"a".repeat(256)).is_err());
    }

    #[test]
    fn tags() {
        for ok in ["latest", "1.0", "_x", "A-b.c_d", &"a".repeat(128)] {
            assert_eq!(validate_tag(ok), Ok(()), "{ok}");
        }
        for bad in ["", ".a", "-a", "a/b", "a:b", &"a".repeat(129)] {
            assert!(validate_tag(bad).is_err(), "{bad}");
        }
    }
}
