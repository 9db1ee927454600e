//! The Merkle tree over entry hashes, as RFC 6962 §2.1 / RFC 9162 §2.1: the leaves are the
//! entry hashes, leaf hash = `SHA-256(0x00 || entry_hash)`, node hash =
//! `SHA-256(0x01 || left || right)`, the root of the empty tree is `SHA-256("")`, and a tree of
//! `n > 1` leaves splits at the largest power of two smaller than `n`.

use crate::sha256;

/// `SHA-256(0x00 || entry_hash)`.
pub fn leaf_hash(entry_hash: &[u8; 32]) -> [u8; 32] {
    sha256(&[&[0u8], entry_hash])
}

/// `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    sha256(&[&[1u8], left, right])
}

/// The root of the empty tree, `SHA-256("")`.
pub fn empty_root() -> [u8; 32] {
    sha256(&[])
}

/// The largest power of two smaller than `n` (`n >= 2`).
fn split(n: usize) -> usize {
    let mut k = 1;
    while k << 1 < n {
        k <<= 1;
    }
    k
}

/// MTH over leaf hashes.
fn mth(leaves: &[[u8; 32]]) -> [u8; 32] {
    match leaves {
        [] => empty_root(),
        [one] => *one,
        _ => {
            let k = split(leaves.len());
            node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
        }
    }
}

/// PATH(m, D[n]) over leaf hashes (RFC 6962 §2.1.1).
fn path(m: usize, leaves: &[[u8; 32]], out: &mut Vec<[u8; 32]>) {
    if leaves.len() <= 1 {
        return;
    }
    let k = split(leaves.len());
    if m < k {
        path(m, &leaves[..k], out);
        out.push(mth(&leaves[k..]));
    } else {
        path(m - k, &leaves[k..], out);
        out.push(mth(&leaves[..k]));
    }
}

/// A tree held in memory: the leaf hashes of the entries pushed so far.
#[derive(Debug, Clone, Default)]
pub struct MerkleTree {
    leaves: Vec<[u8; 32]>,
}

impl MerkleTree {
    /// The empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends an entry hash.
    pub fn push(&mut self, entry_hash: &[u8; 32]) {
        self.leaves.push(leaf_hash(entry_hash));
    }

    /// Number of leaves.
    pub fn len(&self) -> u64 {
        self.leaves.len() as u64
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.leaves.is_empty()
    }

    /// The root of the first `size` leaves (`None` when `size` exceeds the tree).
    pub fn root(&self, size: u64) -> Option<[u8; 32]> {
        let size = usize::try_from(size).ok()?;
        self.leaves.get(..size).map(mth)
    }

    /// The inclusion proof (audit path) of leaf `leaf_index` (0-based: seq − 1) in the tree
    /// of the first `size` leaves; `None` unless `leaf_index < size <= len`.
    pub fn prove(&self, leaf_index: u64, size: u64) -> Option<Vec<[u8; 32]>> {
        let size = usize::try_from(size).ok()?;
        let index = usize::try_from(leaf_index).ok()?;
        if index >= size {
            return None;
        }
        let leaves = self.leaves.get(..size)?;
        let mut out = Vec::new();
        path(index, leaves, &mut out);
        Some(out)
    }
}

/// Verifies that `entry_hash` is leaf `leaf_index` of the tree of `size` leaves whose root is
/// `root`, given the audit path `proof` (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(
    entry_hash: &[u8; 32],
    leaf_index: u64,
    size: u64,
    proof: &[[u8; 32]],
    root: &[u8; 32],
) -> bool {
    if leaf_index >= size {
        return false;
    }
    let mut fnode = leaf_index;
    let mut snode = size - 1;
    let mut r = leaf_hash(entry_hash);
    for p in proof {
        if snode == 0 {
            return false;
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    snode == 0 && aws_lc_rs::constant_time::verify_slices_are_equal(&r, root).is_ok()
}

/// The Merkle frontier (a "compact range" from the start) of a growing tree: the roots of its
/// perfect subtrees, largest first, one per set bit of the tree's size. It gives the root of
/// the tree in `O(log n)` memory and resumes the tree where it stopped: a frontier stored at a
/// checkpoint lets verification go on from that checkpoint without re-reading the entries
/// before it.
///
/// Byte form ([`Frontier::to_bytes`]): the subtree roots concatenated, largest subtree first,
/// 32 bytes each, so `popcount(size) * 32` bytes. A stored frontier is not signed: trust it
/// only once its [`Frontier::root`] equals a signed checkpoint root of the same size.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    /// Roots of the perfect subtrees, largest first.
    peaks: Vec<[u8; 32]>,
}

impl Frontier {
    /// The frontier of the empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends an entry hash as the next leaf.
    pub fn push(&mut self, entry_hash: &[u8; 32]) {
        let mut node = leaf_hash(entry_hash);
        // Each trailing one bit of the size is a perfect subtree of the leaf's height to merge.
        let mut size = self.size;
        while size & 1 == 1 {
            let Some(left) = self.peaks.pop() else { break };
            node = node_hash(&left, &node);
            size >>= 1;
        }
        self.peaks.push(node);
        self.size += 1;
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The Merkle tree hash of the leaves pushed so far (equal to [`MerkleTree::root`] of the
    /// same entries; the empty tree's root when none).
    pub fn root(&self) -> [u8; 32] {
        let mut iter = self.peaks.iter().rev();
        let Some(&last) = iter.next() else {
            return empty_root();
        };
        iter.fold(last, |acc, peak| node_hash(peak, &acc))
    }

    /// The byte form: the subtree roots, largest first, 32 bytes each.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.peaks.concat()
    }

    /// Parses the byte form of the frontier of a tree of `size` leaves; `None` unless `bytes`
    /// holds exactly `popcount(size)` hashes.
    pub fn from_bytes(size: u64, bytes: &[u8]) -> Option<Frontier> {
        let count = usize::try_from(size.count_ones()).ok()?;
        if bytes.len() != count.checked_mul(32)? {
            return None;
        }
        let peaks = bytes
            .chunks_exact(32)
            .map(|c| <[u8; 32]>::try_from(c).ok())
            .collect::<Option<Vec<_>>>()?;
        Some(Frontier { size, peaks })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn h(i: u8) -> [u8; 32] {
        sha256(&[&[i]])
    }

    #[test]
    fn hand_computed_roots() {
        let (a, b, c) = (h(1), h(2), h(3));
        let mut t = MerkleTree::new();
        assert_eq!(t.root(0).unwrap(), empty_root());
        // SHA-256 of the empty string.
        assert_eq!(
            hex::encode(empty_root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        t.push(&a);
        t.push(&b);
        t.push(&c);
        let la = sha256(&[&[0], &a]);
        let lb = sha256(&[&[0], &b]);
        let lc = sha256(&[&[0], &c]);
        assert_eq!(t.root(1).unwrap(), la);
        assert_eq!(t.root(2).unwrap(), sha256(&[&[1], &la, &lb]));
        // Three leaves: split at 2, so root = H(1 || H(1 || a || b) || c).
        let ab = sha256(&[&[1], &la, &lb]);
        assert_eq!(t.root(3).unwrap(), sha256(&[&[1], &ab, &lc]));
        assert_eq!(t.prove(2, 3).unwrap(), vec![ab]);
        assert_eq!(t.prove(0, 3).unwrap(), vec![lb, lc]);
        assert!(t.root(4).is_none());
    }

    #[test]
    fn proofs_verify_for_every_index_and_size() {
        let mut t = MerkleTree::new();
        let hashes: Vec<[u8; 32]> = (0..40u8).map(h).collect();
        for x in &hashes {
            t.push(x);
        }
        for size in 1..=40u64 {
            let root = t.root(size).unwrap();
            for i in 0..size {
                let proof = t.prove(i, size).unwrap();
                let leaf = &hashes[i as usize];
                assert!(verify_inclusion(leaf, i, size, &proof, &root), "{i}/{size}");
                assert!(!verify_inclusion(&h(200), i, size, &proof, &root));
                if size > 1 {
                    assert!(!verify_inclusion(leaf, (i + 1) % size, size, &proof, &root));
                    assert!(!verify_inclusion(leaf, i, size, &proof[1..], &root));
                }
                // Against another tree's root (a different size), the proof fails.
                if let Some(other) = t.root(size + 1) {
                    assert!(!verify_inclusion(leaf, i, size + 1, &proof, &other));
                }
            }
        }
        assert!(t.prove(3, 3).is_none());
    }

    #[test]
    fn frontier_root_equals_tree_root_for_every_size() {
        let mut tree = MerkleTree::new();
        let mut frontier = Frontier::new();
        assert_eq!(frontier.root(), empty_root());
        assert!(frontier.to_bytes().is_empty());
        for i in 0..=70u8 {
            let size = u64::from(i);
            assert_eq!(frontier.size(), size);
            assert_eq!(frontier.root(), tree.root(size).unwrap(), "size {size}");
            // The byte form has one hash per set bit and round-trips.
            let bytes = frontier.to_bytes();
            assert_eq!(bytes.len(), size.count_ones() as usize * 32, "size {size}");
            let back = Frontier::from_bytes(size, &bytes).unwrap();
            assert_eq!(back, frontier);
            // A frontier read back resumes the tree: the next leaves give the same roots.
            let mut resumed = back;
            let mut full = tree.clone();
            for j in 0..5u8 {
                resumed.push(&h(200 + j));
                full.push(&h(200 + j));
                assert_eq!(resumed.root(), full.root(full.len()).unwrap());
            }
            tree.push(&h(i));
            frontier.push(&h(i));
        }
    }

    #[test]
    fn frontier_bytes_of_the_wrong_length_are_refused() {
        let mut f = Frontier::new();
        for i in 0..13u8 {
            f.push(&h(i));
        }
        // 13 = 0b1101: three subtrees (8, 4, 1).
        let bytes = f.to_bytes();
        assert_eq!(bytes.len(), 96);
        assert!(Frontier::from_bytes(13, &bytes).is_some());
        assert!(Frontier::from_bytes(13, &bytes[..64]).is_none());
        assert!(Frontier::from_bytes(13, &bytes[..95]).is_none());
        assert!(Frontier::from_bytes(13, &[bytes.clone(), vec![0; 32]].concat()).is_none());
        assert!(Frontier::from_bytes(12, &bytes).is_none());
        assert!(Frontier::from_bytes(0, &bytes).is_none());
        assert!(Frontier::from_bytes(0, &[]).is_some());
        assert!(Frontier::from_bytes(0, &[0]).is_none());
        // Right length, wrong content: parses, but its root is not the tree's.
        let mut wrong = bytes.clone();
        wrong[40] ^= 1;
        assert_ne!(Frontier::from_bytes(13, &wrong).unwrap().root(), f.root());
        // The same hashes read as another size of the same popcount grow another tree.
        let mut other = Frontier::from_bytes(14, &bytes).unwrap();
        let mut same = Frontier::from_bytes(13, &bytes).unwrap();
        for x in [h(98), h(99)] {
            other.push(&x);
            same.push(&x);
            f.push(&x);
        }
        assert_eq!(same.root(), f.root());
        assert_ne!(other.root(), f.root());
    }
}
