//! A small parser for `/proc/<pid>/mountinfo` (see proc(5)).
//!
//! We read `/proc/thread-self/mountinfo` rather than `/proc/self/…` so that a thread
//! which unshared its mount namespace (the integration tests do) sees its own mounts.

use std::path::{Path, PathBuf};

/// One line of mountinfo, reduced to the fields the driver needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Field 1: the mount's unique id.
    pub mount_id: u64,
    /// Field 4: the directory of the source filesystem that is mounted here. The kernel
    /// appends `//deleted` when that directory has been removed.
    pub root: String,
    /// Field 5: where it is mounted, octal escapes decoded.
    pub mount_point: PathBuf,
    /// Whether the per-mount options (field 6) contain `ro`.
    pub read_only: bool,
}

impl MountEntry {
    /// True when the directory this mount shows was deleted after the mount was made:
    /// the mount still exists but no longer reaches what now lives at the source path.
    pub fn is_deleted(&self) -> bool {
        self.root.ends_with("//deleted")
    }
}

/// The mountinfo file of the calling thread.
pub const THREAD_MOUNTINFO: &str = "/proc/thread-self/mountinfo";

/// Parses the whole text of a mountinfo file; malformed lines are skipped.
pub fn parse(text: &str) -> Vec<MountEntry> {
    text.lines().filter_map(parse_line).collect()
}

/// All mounts stacked on `mount_point`, bottom first (mountinfo lists them in mount order).
pub fn mounts_at(entries: &[MountEntry], mount_point: &Path) -> Vec<MountEntry> {
    entries
        .iter()
        .filter(|e| e.mount_point == mount_point)
        .cloned()
        .collect()
}

/// Like [`mounts_at`] over [`parse`]d text, but only lines whose mount point matches are
/// parsed: kubelet republishes every volume on every pod sync, and a busy node's
/// mountinfo has thousands of lines.
pub fn mounts_at_in(text: &str, mount_point: &Path) -> Vec<MountEntry> {
    let want = escape(&mount_point.to_string_lossy());
    text.lines()
        .filter(|line| line.split(' ').nth(4) == Some(want.as_str()))
        .filter_map(parse_line)
        .collect()
}

/// The kernel's escaping of a path in mountinfo (`show_path`: space, tab, newline,
/// backslash as `\ooo`).
fn escape(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        match c {
            ' ' => out.push_str("\\040"),
            '\t' => out.push_str("\\011"),
            '\n' => out.push_str("\\012"),
            '\\' => out.push_str("\\134"),
            c => out.push(c),
        }
    }
    out
}

fn parse_line(line: &str) -> Option<MountEntry> {
    let mut fields = line.split(' ');
    let mount_id = fields.next()?.parse().ok()?;
    let _parent_id = fields.next()?;
    let _major_minor = fields.next()?;
    let root = unescape(fields.next()?);
    let mount_point = PathBuf::from(unescape(fields.next()?));
    let options = fields.next()?;
    Some(MountEntry {
        mount_id,
        root,
        mount_point,
        read_only: options.split(',').any(|o| o == "ro"),
    })
}

/// Decodes the kernel's `\ooo` escapes (space, tab, newline and backslash).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let digits = &bytes[i + 1..i + 4];
            if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let value = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                if let Ok(byte) = u8::try_from(value) {
                    out.push(byte);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
40 22 0:5 /run/spire/agent-sockets /var/lib/kubelet/pods/u1/volumes/kubernetes.io~csi/spiffe/mount ro,nosuid,nodev,noexec,relatime shared:7 - tmpfs tmpfs rw
41 22 0:5 /run/spire/agent-sockets//deleted /var/lib/kubelet/pods/u2/volumes/kubernetes.io~csi/spiffe/mount rw,relatime - tmpfs tmpfs rw
42 22 0:6 /a /mnt/with\\040space rw - tmpfs tmpfs rw
43 42 0:6 /b /mnt/with\\040space ro - tmpfs tmpfs rw
garbage
";

    #[test]
    fn parses_read_only_flag_from_per_mount_options() {
        let entries = parse(SAMPLE);
        assert_eq!(entries.len(), 5);
        assert!(!entries[0].read_only);
        assert!(entries[1].read_only);
    }

    #[test]
    fn deleted_root_marks_a_stale_mount() {
        let entries = parse(SAMPLE);
        assert!(!entries[1].is_deleted());
        assert!(entries[2].is_deleted());
    }

    #[test]
    fn octal_escapes_in_mount_point_are_decoded() {
        let entries = parse(SAMPLE);
        let stacked = mounts_at(&entries, Path::new("/mnt/with space"));
        assert_eq!(
            stacked.iter().map(|e| e.mount_id).collect::<Vec<_>>(),
            [42, 43]
        );
    }

    #[test]
    fn filtering_by_mount_point_agrees_with_parsing_everything() {
        for point in [
            "/mnt/with space",
            "/var/lib/kubelet/pods/u1/volumes/kubernetes.io~csi/spiffe/mount",
            "/",
            "/nothing/here",
        ] {
            let point = Path::new(point);
            assert_eq!(
                mounts_at_in(SAMPLE, point),
                mounts_at(&parse(SAMPLE), point),
                "{point:?}"
            );
        }
        assert_eq!(escape("a b\\c\td"), "a\\040b\\134c\\011d");
    }

    #[test]
    fn unescape_leaves_plain_and_truncated_escapes_alone() {
        for (input, want) in [
            ("plain", "plain"),
            ("a\\134b", "a\\b"),
            ("tab\\011", "tab\t"),
            ("end\\04", "end\\04"),
            ("bad\\9zz", "bad\\9zz"),
        ] {
            assert_eq!(unescape(input), want, "{input}");
        }
    }
}
