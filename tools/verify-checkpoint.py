#!/usr/bin/env python3
"""Independent verifier of the chain's transparency log, written from RFC 9162 §2.1 (Merkle tree,
inclusion and consistency proofs), c2sp.org/tlog-tiles, c2sp.org/tlog-checkpoint,
c2sp.org/signed-note, c2sp.org/tlog-cosignature (Ed25519 cosignature/v1) and from
docs/format.md ("Merkle tree and tiles"). It shares no code with
the daemon on purpose; it reads chain segments with tools/verify-chain.py.

Usage:
  verify-checkpoint.py note --vkey VKEY [--witness W_VKEY]... FILE
  verify-checkpoint.py root --chain DIR --size N
  verify-checkpoint.py inclusion --leaf BLOCKHASH_HEX --index I --size N --root HEX --proof HEX,...
  verify-checkpoint.py consistency --old N --old-root HEX --new M --new-root HEX --proof HEX,...
  verify-checkpoint.py fetch URL --vkey VKEY --height H [--chain DIR]
  verify-checkpoint.py selftest

Each prints one JSON object and exits 0 when the check holds; otherwise it prints one line
saying why on stderr and exits 1 (a check failed) or 2 (bad usage).
"""
import argparse
import base64
import binascii
import contextlib
import hashlib
import importlib.util
import io
import json
import os
import sys
import urllib.error
import urllib.request

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

TILE_WIDTH = 256
HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()
ED25519 = 0x01
COSIGNATURE_V1 = 0x04


class CheckFailed(Exception):
    """A check did not hold: exit 1."""


class BadUsage(Exception):
    """The arguments are malformed: exit 2."""


# ---------------------------------------------------------------------------------------------
# RFC 9162 §2.1: the tree. Everything below takes leaf hashes, so that the RFC's raw test leaves
# and our 32-byte block hashes go through the same code.

def sha256(data):
    return hashlib.sha256(data).digest()


def leaf_hash(leaf_data):
    return sha256(b"\x00" + leaf_data)


def node_hash(left, right):
    return sha256(b"\x01" + left + right)


def split_point(n):
    """The largest power of two smaller than n (n >= 2): where RFC 9162 splits a tree."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def mth(leaf_hashes):
    """MTH of a list of leaf hashes."""
    n = len(leaf_hashes)
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return leaf_hashes[0]
    k = split_point(n)
    return node_hash(mth(leaf_hashes[:k]), mth(leaf_hashes[k:]))


def inclusion_path(index, leaf_hashes):
    """PATH(m, D[n]) of §2.1.3.1, computed from the leaves (for the self-test)."""
    n = len(leaf_hashes)
    if n <= 1:
        return []
    k = split_point(n)
    if index < k:
        return inclusion_path(index, leaf_hashes[:k]) + [mth(leaf_hashes[k:])]
    return inclusion_path(index - k, leaf_hashes[k:]) + [mth(leaf_hashes[:k])]


def consistency_path(m, leaf_hashes):
    """PROOF(m, D[n]) of §2.1.4.1 (for the self-test)."""
    def subproof(m, leaves, complete):
        n = len(leaves)
        if m == n:
            return [] if complete else [mth(leaves)]
        k = split_point(n)
        if m <= k:
            return subproof(m, leaves[:k], complete) + [mth(leaves[k:])]
        return subproof(m - k, leaves[k:], False) + [mth(leaves[:k])]
    if m == 0 or m >= len(leaf_hashes):
        return []
    return subproof(m, leaf_hashes, True)


def lsb(x):
    return x & 1


def verify_inclusion(leaf, index, size, proof, root):
    """§2.1.3.2; raises CheckFailed saying why."""
    if index >= size:
        raise CheckFailed(f"leaf index {index} is not below tree size {size}")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise CheckFailed("inclusion proof is longer than the tree is deep")
        if lsb(fn) or fn == sn:
            r = node_hash(p, r)
            if not lsb(fn):
                while not lsb(fn) and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise CheckFailed("inclusion proof is shorter than the tree is deep")
    if r != root:
        raise CheckFailed(f"inclusion proof leads to root {r.hex()}, not {root.hex()}")


def verify_consistency(first, second, first_hash, second_hash, proof):
    """§2.1.4.2, with the two cases the RFC leaves to the caller: an empty old tree is
    consistent with every tree, and a tree is consistent with itself (both with an empty
    proof)."""
    if first > second:
        raise CheckFailed(f"old size {first} is larger than new size {second}")
    if first == second:
        if proof:
            raise CheckFailed("equal sizes take an empty consistency proof")
        if first_hash != second_hash:
            raise CheckFailed("equal sizes with different roots: the log forked")
        return
    if first == 0:
        if proof:
            raise CheckFailed("an empty old tree takes an empty consistency proof")
        return
    if not proof:
        raise CheckFailed("empty consistency proof")
    path = list(proof)
    if first & (first - 1) == 0:
        path.insert(0, first_hash)
    fn, sn = first - 1, second - 1
    while lsb(fn):
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise CheckFailed("consistency proof is longer than the tree is deep")
        if lsb(fn) or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not lsb(fn):
                while not lsb(fn) and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise CheckFailed("consistency proof is shorter than the tree is deep")
    if fr != first_hash:
        raise CheckFailed(f"consistency proof leads to old root {fr.hex()}, not {first_hash.hex()}")
    if sr != second_hash:
        raise CheckFailed(f"consistency proof leads to new root {sr.hex()}, not {second_hash.hex()}")


# ---------------------------------------------------------------------------------------------
# c2sp.org/signed-note and tlog-checkpoint

def key_id(name, key_type, public_key):
    return sha256(name.encode() + b"\n" + bytes([key_type]) + public_key)[:4]


def valid_key_name(name):
    return name != "" and "+" not in name and not any(c.isspace() for c in name)


class Verifier:
    """A verifier key: `<name>+<hex key id>+<base64(type || public key)>`."""

    def __init__(self, vkey, key_type=ED25519):
        # Neither the name nor the id holds '+'; the base64 key may.
        parts = vkey.strip().split("+", 2)
        if len(parts) != 3:
            raise BadUsage(f"vkey {vkey!r} is not name+id+key")
        name, id_hex, encoded = parts
        if not valid_key_name(name):
            raise BadUsage(f"vkey name {name!r} is empty or holds a space or '+'")
        try:
            wanted_id = bytes.fromhex(id_hex)
            material = base64.b64decode(encoded, validate=True)
        except ValueError as err:
            raise BadUsage(f"vkey {vkey!r}: {err}") from None
        if len(wanted_id) != 4 or id_hex != id_hex.lower():
            raise BadUsage(f"vkey key id {id_hex!r} is not 8 lowercase hex digits")
        if len(material) != 33 or material[0] != key_type:
            raise BadUsage(f"vkey is not a key of type {key_type:#04x} with 32 bytes")
        if key_id(name, key_type, material[1:]) != wanted_id:
            raise BadUsage(f"vkey key id {id_hex} does not match its name and key")
        self.name, self.id, self.public = name, wanted_id, material[1:]
        self.key = Ed25519PublicKey.from_public_bytes(self.public)


def open_note(data, verifier):
    """Verifies a signed note; returns its text (the signed bytes, as str)."""
    try:
        note = data.decode("utf-8")
    except UnicodeDecodeError:
        raise CheckFailed("the note is not UTF-8") from None
    if any(ord(c) < 0x20 and c != "\n" for c in note):
        raise CheckFailed("the note holds a control character")
    split = note.rfind("\n\n")
    if split < 0:
        raise CheckFailed("the note has no blank line before its signatures")
    text, signatures = note[: split + 1], note[split + 2 :]
    if not signatures.endswith("\n"):
        raise CheckFailed("the note's last signature line does not end with a newline")
    ours = 0
    for line in signatures[:-1].split("\n"):
        if not line.startswith("\u2014 "):
            raise CheckFailed(f"not a signature line: {line[:60]!r}")
        name, _, encoded = line[2:].rpartition(" ")
        try:
            sig = base64.b64decode(encoded, validate=True)
        except binascii.Error:
            raise CheckFailed(f"signature of {name!r} is not base64") from None
        if not valid_key_name(name) or len(sig) < 5:
            raise CheckFailed(f"malformed signature line: {line[:60]!r}")
        # Signatures by other keys (witnesses, a rotated key) are ignored, as the spec says.
        if name != verifier.name or sig[:4] != verifier.id:
            continue
        try:
            verifier.key.verify(sig[4:], text.encode())
        except InvalidSignature:
            raise CheckFailed(f"the signature by {name} does not verify") from None
        ours += 1
    if ours == 0:
        raise CheckFailed(f"the note carries no signature by {verifier.name}+{verifier.id.hex()}")
    return text


def cosigned_at(data, witness):
    """The timestamp of `witness`'s valid cosignature/v1 on the note `data` (c2sp.org/
    tlog-cosignature): Ed25519 over the lines "cosignature/v1" and "time <ts>" followed by the
    note text; the signature is an 8-byte big-endian timestamp and the 64-byte signature."""
    note = data.decode("utf-8")
    split = note.rfind("\n\n")
    text, signatures = note[: split + 1], note[split + 2 :]
    for line in signatures.rstrip("\n").split("\n"):
        name, _, encoded = line[2:].rpartition(" ")
        try:
            sig = base64.b64decode(encoded, validate=True)
        except binascii.Error:
            continue
        if name != witness.name or sig[:4] != witness.id or len(sig) != 4 + 8 + 64:
            continue
        timestamp = int.from_bytes(sig[4:12], "big")
        message = f"cosignature/v1\ntime {timestamp}\n{text}".encode()
        try:
            witness.key.verify(sig[12:], message)
        except InvalidSignature:
            raise CheckFailed(f"the cosignature by {name} does not verify") from None
        return timestamp
    raise CheckFailed(f"the note carries no cosignature by {witness.name}+{witness.id.hex()}")


def parse_checkpoint(text):
    """(origin, size, root) of a checkpoint's note text."""
    lines = text.split("\n")
    if len(lines) < 4 or lines[-1] != "":
        raise CheckFailed("a checkpoint has at least three lines")
    origin, size_text, root_text = lines[0], lines[1], lines[2]
    if not origin:
        raise CheckFailed("the checkpoint's origin line is empty")
    if not size_text.isascii() or not size_text.isdigit() or (size_text != "0" and size_text[0] == "0"):
        raise CheckFailed(f"tree size {size_text!r} is not a decimal without leading zeros")
    try:
        root = base64.b64decode(root_text, validate=True)
    except binascii.Error:
        raise CheckFailed("the root hash line is not base64") from None
    if len(root) != HASH_SIZE:
        raise CheckFailed(f"the root hash is {len(root)} bytes, not 32")
    if any(line == "" for line in lines[3:-1]):
        raise CheckFailed("an extension line is empty")
    return origin, int(size_text), root


# ---------------------------------------------------------------------------------------------
# c2sp.org/tlog-tiles: paths, widths, and proofs built from tile hashes

def index_path(n):
    """N in 3-digit path elements, all but the last prefixed with `x`."""
    groups = [f"{n % 1000:03d}"]
    n //= 1000
    while n > 0:
        groups.append(f"x{n % 1000:03d}")
        n //= 1000
    return "/".join(reversed(groups))


def tile_width(level, n, size):
    """How many hashes tile (level, n) holds in a tree of `size` leaves (0: none)."""
    stored = size >> (8 * level)
    return max(0, min(TILE_WIDTH, stored - n * TILE_WIDTH))


def tile_path(level, n, width):
    base = f"tile/{level}/{index_path(n)}"
    return base if width == TILE_WIDTH else f"{base}.p/{width}"


def entries_path(n, width):
    base = f"tile/entries/{index_path(n)}"
    return base if width == TILE_WIDTH else f"{base}.p/{width}"


class TileSource:
    """Reads tiles through `get(path) -> bytes or None (absent)`, for a tree of `size`, and
    keeps what it read. A partial that a checkpoint named is deleted once its full tile exists
    (and a copy may lack it): a wider partial or the full tile starts with the same `width`
    hashes (tiles only grow), so any of them serves."""

    def __init__(self, get, size):
        self.get, self.size, self.tiles, self.fetched = get, size, {}, []

    def _read(self, base, width, item):
        candidates = [base if width == TILE_WIDTH else f"{base}.p/{width}"]
        if width < TILE_WIDTH:
            candidates.append(base)
            candidates += [f"{base}.p/{w}" for w in range(width + 1, TILE_WIDTH)]
        for path in candidates:
            data = self.get(path)
            if data is None:
                continue
            self.fetched.append(path)
            stated = TILE_WIDTH if path == base else int(path.rsplit("/", 1)[1])
            if item is not None and len(data) != stated * item:
                raise CheckFailed(f"{path} is {len(data)} bytes, not {stated * item}")
            return data
        raise CheckFailed(f"{candidates[0]} is not served (nor the full tile or a wider partial)")

    def hashes(self, level, n):
        if (level, n) not in self.tiles:
            width = tile_width(level, n, self.size)
            if width == 0:
                raise CheckFailed(f"tile {level}/{n} lies beyond tree size {self.size}")
            data = self._read(f"tile/{level}/{index_path(n)}", width, HASH_SIZE)
            self.tiles[(level, n)] = [data[i : i + HASH_SIZE] for i in range(0, width * HASH_SIZE, HASH_SIZE)]
        return self.tiles[(level, n)]

    def stored_hash(self, level, index):
        """The index-th hash of tile level `level` (the MTH of 256**level leaves)."""
        return self.hashes(level, index // TILE_WIDTH)[index % TILE_WIDTH]

    def subtree(self, height, index):
        """MTH of the perfect subtree of 2**height leaves starting at leaf index * 2**height:
        the hashes of tile level height // 8 below it, hashed up the remaining levels."""
        level, sub = divmod(height, 8)
        first = index << sub
        nodes = [self.stored_hash(level, first + i) for i in range(1 << sub)]
        while len(nodes) > 1:
            nodes = [node_hash(nodes[i], nodes[i + 1]) for i in range(0, len(nodes), 2)]
        return nodes[0]

    def range_hash(self, start, end):
        """MTH(D[start:end]) for a range of the RFC tree: perfect subtrees of decreasing size,
        folded from the right."""
        pieces = []
        while start < end:
            height = (end - start).bit_length() - 1
            if start % (1 << height):
                raise CheckFailed(f"range {start}..{end} is not a subtree of the tree")
            pieces.append(self.subtree(height, start >> height))
            start += 1 << height
        root = pieces.pop()
        while pieces:
            root = node_hash(pieces.pop(), root)
        return root

    def inclusion_proof(self, index):
        """PATH(index, D[size]) of §2.1.3.1, each element read from the tiles."""
        ranges, lo, hi = [], 0, self.size
        while hi - lo > 1:
            k = split_point(hi - lo)
            if index - lo < k:
                ranges.append((lo + k, hi))
                hi = lo + k
            else:
                ranges.append((lo, lo + k))
                lo += k
        return [self.range_hash(a, b) for a, b in reversed(ranges)]

    def entry(self, index):
        """The leaf data of leaf `index`, from its entry bundle."""
        n = index // TILE_WIDTH
        width = min(TILE_WIDTH, self.size - n * TILE_WIDTH)
        data = self._read(f"tile/entries/{index_path(n)}", width, None)
        at, entries = 0, []
        while at < len(data):
            if at + 2 > len(data):
                raise CheckFailed("an entry bundle ends inside a length prefix")
            length = int.from_bytes(data[at : at + 2], "big")
            if at + 2 + length > len(data):
                raise CheckFailed("an entry bundle ends inside an entry")
            entries.append(data[at + 2 : at + 2 + length])
            at += 2 + length
        if len(entries) < width:
            raise CheckFailed(f"entry bundle {n} holds {len(entries)} entries, not {width}")
        return entries[index % TILE_WIDTH]


def http_getter(url):
    base = url.rstrip("/")

    def get(path):
        try:
            with urllib.request.urlopen(f"{base}/{path}", timeout=30) as reply:
                return reply.read()
        except urllib.error.HTTPError as err:
            if err.code == 404:
                return None
            raise CheckFailed(f"GET {base}/{path}: HTTP {err.code}") from None
        except (urllib.error.URLError, OSError) as err:
            raise CheckFailed(f"GET {base}/{path}: {err}") from None
    return get


# ---------------------------------------------------------------------------------------------
# The chain, read and verified by tools/verify-chain.py

def chain_block_hashes(directory):
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "verify-chain.py")
    spec = importlib.util.spec_from_file_location("verify_chain", path)
    verify_chain = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(verify_chain)
    said = io.StringIO()
    try:
        with contextlib.redirect_stdout(said):
            verify_chain.main(directory)
    except SystemExit:
        raise CheckFailed(f"the chain in {directory} is not intact: {said.getvalue().strip()}") from None
    except OSError as err:
        raise CheckFailed(f"cannot read the chain in {directory}: {err}") from None
    return [block["hash"] for block in verify_chain.BLOCKS]


# ---------------------------------------------------------------------------------------------
# Subcommands

def hex_hash(text, what):
    try:
        value = bytes.fromhex(text)
    except ValueError:
        raise BadUsage(f"{what} {text!r} is not hex") from None
    if len(value) != HASH_SIZE:
        raise BadUsage(f"{what} is {len(value)} bytes, not 32")
    return value


def hex_list(text):
    return [hex_hash(item, "proof element") for item in text.split(",") if item.strip()]


def cmd_note(args):
    verifier = Verifier(args.vkey)
    witnesses = [Verifier(w, COSIGNATURE_V1) for w in args.witness]
    with open(args.file, "rb") as f:
        data = f.read()
    text = open_note(data, verifier)
    origin, size, root = parse_checkpoint(text)
    cosigned = [{"name": w.name, "timestamp": cosigned_at(data, w)} for w in witnesses]
    return {"origin": origin, "size": size, "root": root.hex(), "cosigned": cosigned}


def cmd_root(args):
    hashes = chain_block_hashes(args.chain)
    if args.size > len(hashes):
        raise CheckFailed(f"the chain holds {len(hashes)} blocks, fewer than {args.size}")
    return {"size": args.size, "root": mth([leaf_hash(h) for h in hashes[: args.size]]).hex()}


def cmd_inclusion(args):
    leaf = hex_hash(args.leaf, "leaf")
    verify_inclusion(leaf_hash(leaf), args.index, args.size, hex_list(args.proof),
                     hex_hash(args.root, "root"))
    return {"index": args.index, "size": args.size, "root": args.root.lower()}


def cmd_consistency(args):
    verify_consistency(args.old, args.new, hex_hash(args.old_root, "old root"),
                       hex_hash(args.new_root, "new root"), hex_list(args.proof))
    return {"old": args.old, "new": args.new, "old_root": args.old_root.lower(),
            "new_root": args.new_root.lower()}


def cmd_fetch(args):
    verifier = Verifier(args.vkey)
    get = http_getter(args.url)
    note = get("checkpoint")
    if note is None:
        raise CheckFailed(f"{args.url}/checkpoint is not served")
    origin, size, root = parse_checkpoint(open_note(note, verifier))
    if args.height >= size:
        raise CheckFailed(f"height {args.height} is not in the tree of size {size}")
    tiles = TileSource(get, size)
    proof = tiles.inclusion_proof(args.height)
    block_hash = tiles.entry(args.height)
    if len(block_hash) != HASH_SIZE:
        raise CheckFailed(f"the entry of height {args.height} is {len(block_hash)} bytes, not a block hash")
    if leaf_hash(block_hash) != tiles.stored_hash(0, args.height):
        raise CheckFailed(f"the entry of height {args.height} does not hash to its level-0 tile hash")
    verify_inclusion(leaf_hash(block_hash), args.height, size, proof, root)
    if args.chain is not None:
        local = chain_block_hashes(args.chain)
        if args.height >= len(local):
            raise CheckFailed(f"the local chain has no block at height {args.height}")
        if local[args.height] != block_hash:
            raise CheckFailed(f"the published block hash at height {args.height} is {block_hash.hex()}, "
                              f"the local chain's is {local[args.height].hex()}")
    return {"origin": origin, "size": size, "root": root.hex(), "height": args.height,
            "block_hash": block_hash.hex(), "proof": [p.hex() for p in proof],
            "tiles_fetched": tiles.fetched}


# ---------------------------------------------------------------------------------------------
# Self-test: known answers from RFC 6962's reference tests (as shipped with Trillian and
# transparency-dev/merkle), golang.org/x/mod/sumdb/note, c2sp.org/signed-note and tlog-tiles.

CT_LEAVES = ["", "00", "10", "2021", "3031", "40414243", "5051525354555657",
             "606162636465666768696a6b6c6d6e6f"]
CT_ROOTS = [  # sizes 1..8
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
# (leaf, size, proof), the leaf counted from 1 as in the original tests.
CT_INCLUSION = [
    (1, 1, []),
    (1, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (6, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (3, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (2, 5, ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
]
CT_CONSISTENCY = [  # (old size, new size, proof)
    (1, 1, []),
    (1, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (6, 8, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 5, ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
    (6, 7, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
]

PETER_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
ENOCH_VKEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
PETER_TEXT = ("If you think cryptography is the answer to your problem,\n"
              "then you don't know what your problem is.\n")
PETER_SIG = ("\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKv"
             "qfqdngotpRZb6KE6RyyBwJnAM=\n")
ENOCH_SIG = ("\u2014 EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01"
             "oOTGwnWLox33WWd1RvMc+QQ=\n")
C2SP_VKEY = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k"
C2SP_NOTE = ("This is an example message.\n\n\u2014 example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXp"
             "pzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n")
# docs/format.md's checkpoint vector: its key's base64 holds '+', as any key's may.
FORMAT_VKEY = "example.org/opdbus-test+430a7780+AQOhB7/zzhC+HXDdGOdLwJln5NYwm6UNXx3chmQSVTG4"
FORMAT_NOTE = ("example.org/opdbus-test\n8\nV4BctSqAUGvuS/ggJ9sCK+NHYWcPIhpCAp70RzKkDQo=\n\n\u2014 example.org/"
               "opdbus-test Qwp3gFriandsZgSjB88bMgyHnzgY/WzL9ZdKyP7lFhnAaj8Fdk319Eja6deVc8ay+hmF6L5Hy5XCU1MbAek"
               "FY28ZfA8=\n")


def selftest():
    failures, passed = [], [0]

    def expect(name, ok):
        if ok:
            passed[0] += 1
        else:
            failures.append(name)

    def fails(name, fn, *args):
        try:
            fn(*args)
        except CheckFailed:
            expect(name, True)
        else:
            expect(name, False)

    def holds(name, fn, *args):
        try:
            fn(*args)
        except CheckFailed as err:
            failures.append(f"{name}: {err}")
        else:
            expect(name, True)

    leaves = [leaf_hash(bytes.fromhex(x)) for x in CT_LEAVES]
    roots = [bytes.fromhex(r) for r in CT_ROOTS]
    expect("empty root", mth([]) == EMPTY_ROOT)
    for size in range(1, 9):
        expect(f"root of size {size}", mth(leaves[:size]) == roots[size - 1])

    flip = lambda h: bytes([h[0] ^ 1]) + h[1:]  # noqa: E731
    for leaf, size, proof_hex in CT_INCLUSION:
        index, proof, root = leaf - 1, [bytes.fromhex(p) for p in proof_hex], roots[size - 1]
        name = f"inclusion {index}/{size}"
        holds(name, verify_inclusion, leaves[index], index, size, proof, root)
        expect(f"{name} path", inclusion_path(index, leaves[:size]) == proof)
        fails(f"{name} wrong leaf", verify_inclusion, flip(leaves[index]), index, size, proof, root)
        fails(f"{name} wrong root", verify_inclusion, leaves[index], index, size, proof, flip(root))
        fails(f"{name} index+1", verify_inclusion, leaves[index], index + 1, size, proof, root)
        fails(f"{name} size*2", verify_inclusion, leaves[index], index, size * 2, proof, root)
        fails(f"{name} longer", verify_inclusion, leaves[index], index, size, proof + [root], root)
        if proof:
            fails(f"{name} index-1", verify_inclusion, leaves[index], index ^ 1, size, proof, root)
            fails(f"{name} shorter", verify_inclusion, leaves[index], index, size, proof[:-1], root)
            fails(f"{name} size/2", verify_inclusion, leaves[index], index, size // 2, proof, root)
            for i in range(len(proof)):
                bad = proof[:i] + [flip(proof[i])] + proof[i + 1 :]
                fails(f"{name} proof[{i}] flipped", verify_inclusion, leaves[index], index, size, bad, root)
    for size in range(1, 9):
        for index in range(size):
            holds(f"inclusion {index}/{size} generated", verify_inclusion, leaves[index], index, size,
                  inclusion_path(index, leaves[:size]), roots[size - 1])

    for old, new, proof_hex in CT_CONSISTENCY:
        proof, r1, r2 = [bytes.fromhex(p) for p in proof_hex], roots[old - 1], roots[new - 1]
        name = f"consistency {old}->{new}"
        holds(name, verify_consistency, old, new, r1, r2, proof)
        expect(f"{name} path", consistency_path(old, leaves[:new]) == proof)
        fails(f"{name} wrong old root", verify_consistency, old, new, flip(r1), r2, proof)
        if old != new:
            fails(f"{name} wrong new root", verify_consistency, old, new, r1, flip(r2), proof)
            fails(f"{name} swapped roots", verify_consistency, old, new, r2, r1, proof)
            fails(f"{name} empty proof", verify_consistency, old, new, r1, r2, [])
            fails(f"{name} shorter", verify_consistency, old, new, r1, r2, proof[:-1])
            fails(f"{name} longer", verify_consistency, old, new, r1, r2, proof + [r1])
            fails(f"{name} new*2", verify_consistency, old, new * 2, r1, r2, proof)
            fails(f"{name} new/2", verify_consistency, old, new // 2, r1, r2, proof)
            fails(f"{name} old-1", verify_consistency, old - 1, new, r1, r2, proof)
            fails(f"{name} old+1", verify_consistency, old + 1, new, r1, r2, proof)
            fails(f"{name} old^2", verify_consistency, old ^ 2, new, r1, r2, proof)
            for i in range(len(proof)):
                bad = proof[:i] + [flip(proof[i])] + proof[i + 1 :]
                fails(f"{name} proof[{i}] flipped", verify_consistency, old, new, r1, r2, bad)
    for new in range(1, 9):
        for old in range(1, new + 1):
            holds(f"consistency {old}->{new} generated", verify_consistency, old, new,
                  roots[old - 1], roots[new - 1], consistency_path(old, leaves[:new]))
    fails("consistency old > new", verify_consistency, 5, 4, roots[4], roots[3], [])

    # Signed notes: Go's sumdb/note example (one and two signatures) and c2sp.org/signed-note's.
    peter, enoch = Verifier(PETER_VKEY), Verifier(ENOCH_VKEY)
    one = (PETER_TEXT + "\n" + PETER_SIG).encode()
    two = (PETER_TEXT + "\n" + PETER_SIG + ENOCH_SIG).encode()
    expect("go note", _opens(one, peter) == PETER_TEXT)
    expect("go note, two signatures, first key", _opens(two, peter) == PETER_TEXT)
    expect("go note, two signatures, second key", _opens(two, enoch) == PETER_TEXT)
    expect("c2sp note", _opens(C2SP_NOTE.encode(), Verifier(C2SP_VKEY)) == "This is an example message.\n")
    expect("docs/format.md checkpoint", _opens(FORMAT_NOTE.encode(), Verifier(FORMAT_VKEY)) == FORMAT_NOTE.split("\n\n")[0] + "\n")
    fails("go note, text changed", open_note, one.replace(b"cryptography", b"Cryptography"), peter)
    fails("go note, other key", open_note, one, enoch)
    # The same name and key id with another key: a signature by a known name+id that fails.
    impostor = Verifier.__new__(Verifier)
    impostor.name, impostor.id, impostor.public = peter.name, peter.id, enoch.public
    impostor.key = enoch.key
    fails("go note, same name and id, other key", open_note, one, impostor)
    fails("go note, no blank line", open_note, (PETER_TEXT + PETER_SIG).encode(), peter)
    fails("go note, no final newline", open_note, one[:-1], peter)
    try:
        Verifier(PETER_VKEY.replace("c74f20a3", "c74f20a4"))
        expect("vkey with a wrong key id is refused", False)
    except BadUsage:
        expect("vkey with a wrong key id is refused", True)

    # Checkpoint bodies.
    root_b64 = base64.b64encode(roots[7]).decode()
    expect("checkpoint parses", parse_checkpoint(f"example.com/log\n8\n{root_b64}\n") == ("example.com/log", 8, roots[7]))
    for bad in (f"example.com/log\n08\n{root_b64}\n", f"example.com/log\n8\n{root_b64}",
                f"\n8\n{root_b64}\n", "example.com/log\n8\nAAAA\n", f"example.com/log\n8\n{root_b64}\n\n"):
        fails(f"checkpoint {bad!r} refused", parse_checkpoint, bad)

    # Tile layout: c2sp.org/tlog-tiles' examples.
    expect("path 1234067", index_path(1234067) == "x001/x234/067")
    expect("path 0", index_path(0) == "000")
    expect("path 1000", index_path(1000) == "x001/000")
    widths = {(level, n): tile_width(level, n, 70000) for level in range(3) for n in range(274)}
    expect("70000: 273 full level-0 tiles, then 112",
           [widths[(0, n)] for n in range(274)] == [256] * 273 + [112])
    expect("70000: level 1 is 256 and 17", (widths[(1, 0)], widths[(1, 1)], widths[(1, 2)]) == (256, 17, 0))
    expect("70000: level 2 is 1", (widths[(2, 0)], widths[(2, 1)]) == (1, 0))
    expect("256: one full tile, level 1 width 1", (tile_width(0, 0, 256), tile_width(0, 1, 256),
                                                  tile_width(1, 0, 256)) == (256, 0, 1))

    # Proofs built from tiles equal the RFC's, for trees whose right edge is partial at each
    # level; the tiles come from the definition MTH(D[(n*256+i)*256**l : ...]).
    import random
    rng = random.Random(16)
    for size, heights in ((1, [0]), (255, [0, 254]), (256, [0, 255]), (301, [0, 255, 256, 300]),
                          (70000, [0, 65535, 65536, 69999])):
        block_hashes = [rng.randbytes(32) for _ in range(size)]
        leaf_hashes = [leaf_hash(h) for h in block_hashes]
        served = _tiles_of(block_hashes, leaf_hashes, size)
        root = mth(leaf_hashes)
        for height in heights:
            source = TileSource(served.get, size)
            try:
                proof = source.inclusion_proof(height)
                entry = source.entry(height)
                verify_inclusion(leaf_hash(entry), height, size, proof, root)
                expect(f"tile proof {height}/{size}", entry == block_hashes[height]
                       and proof == inclusion_path(height, leaf_hashes))
            except CheckFailed as err:
                failures.append(f"tile proof {height}/{size}: {err}")
    # A partial the checkpoint named was replaced by a wider one: the wider one serves.
    block_hashes = [rng.randbytes(32) for _ in range(300)]
    leaf_hashes = [leaf_hash(h) for h in block_hashes]
    later = _tiles_of(block_hashes, leaf_hashes, 300)
    source = TileSource(later.get, 290)
    holds("a wider partial serves a narrower checkpoint", lambda: verify_inclusion(
        leaf_hash(source.entry(289)), 289, 290, source.inclusion_proof(289), mth(leaf_hashes[:290])))
    expect("a wider partial was read", "tile/0/001.p/44" in source.fetched)
    for path, at in (("tile/0/001.p/44", 0), ("tile/1/000.p/1", 0), ("tile/entries/001.p/44", 42 * 34 + 2)):
        damaged = dict(later)
        damaged[path] = damaged[path][:at] + flip(damaged[path][at:])
        source = TileSource(damaged.get, 300)
        fails(f"a damaged {path} breaks the proof of 298", lambda: verify_inclusion(
            leaf_hash(source.entry(298)), 298, 300, source.inclusion_proof(298), mth(leaf_hashes)))

    if failures:
        raise CheckFailed(f"{len(failures)} self-test vectors failed, first: {failures[0]}")
    return {"selftest": "ok", "vectors": passed[0]}


def _opens(data, verifier):
    try:
        return open_note(data, verifier)
    except CheckFailed:
        return None


def _tiles_of(block_hashes, leaf_hashes, size):
    """The tiles and bundles of a tree of `size`, per the tlog-tiles definition, as a dict."""
    served, level = {}, 0
    while size >> (8 * level):
        span = TILE_WIDTH ** level
        stored = size >> (8 * level)
        hashes = [mth(leaf_hashes[j * span : (j + 1) * span]) for j in range(stored)]
        for n in range(0, (stored + TILE_WIDTH - 1) // TILE_WIDTH):
            part = hashes[n * TILE_WIDTH : (n + 1) * TILE_WIDTH]
            served[tile_path(level, n, len(part))] = b"".join(part)
            if level == 0:
                entries = block_hashes[n * TILE_WIDTH : (n + 1) * TILE_WIDTH]
                served[entries_path(n, len(entries))] = b"".join(
                    len(e).to_bytes(2, "big") + e for e in entries)
        level += 1
    return served


def main(argv):
    parser = argparse.ArgumentParser(prog="verify-checkpoint.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("note", help="verify a signed checkpoint file")
    p.add_argument("--vkey", required=True)
    p.add_argument("--witness", action="append", default=[],
                   help="a witness's cosigner vkey (type 0x04); its cosignature must verify")
    p.add_argument("file")
    p = sub.add_parser("root", help="the Merkle root of the first N blocks of a chain")
    p.add_argument("--chain", required=True)
    p.add_argument("--size", required=True, type=int)
    p = sub.add_parser("inclusion", help="verify an inclusion proof")
    p.add_argument("--leaf", required=True, help="the block hash (leaf data), hex")
    p.add_argument("--index", required=True, type=int)
    p.add_argument("--size", required=True, type=int)
    p.add_argument("--root", required=True)
    p.add_argument("--proof", required=True, help="hex hashes separated by commas (may be empty)")
    p = sub.add_parser("consistency", help="verify a consistency proof")
    p.add_argument("--old", required=True, type=int)
    p.add_argument("--old-root", required=True)
    p.add_argument("--new", required=True, type=int)
    p.add_argument("--new-root", required=True)
    p.add_argument("--proof", required=True)
    p = sub.add_parser("fetch", help="verify a published log over HTTP and prove one block in it")
    p.add_argument("url")
    p.add_argument("--vkey", required=True)
    p.add_argument("--height", required=True, type=int)
    p.add_argument("--chain", help="also compare the block hash with this local chain")
    sub.add_parser("selftest", help="check the known-answer vectors")
    args = parser.parse_args(argv)
    for name in ("size", "index", "old", "new", "height"):
        if getattr(args, name, 0) < 0:
            parser.error(f"--{name} must not be negative")
    commands = {"note": cmd_note, "root": cmd_root, "inclusion": cmd_inclusion,
                "consistency": cmd_consistency, "fetch": cmd_fetch, "selftest": lambda _: selftest()}
    try:
        result = commands[args.command](args)
    except BadUsage as err:
        print(f"verify-checkpoint.py: {err}", file=sys.stderr)
        return 2
    except CheckFailed as err:
        print(f"verify-checkpoint.py: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        print(f"verify-checkpoint.py: {err}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
