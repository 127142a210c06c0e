#!/usr/bin/env python3
"""Independent verifier of an opdbus-blockchain chain directory, written from docs/format.md.

Usage: verify-chain.py [--vectors] CHAIN_DIR
Exit 0 and "intact <blocks> <head height> <head hash>" when every rule holds (then " torn-tail"
or " interrupted-creation <segment>" when the newest segment ends so; see docs/format.md),
exit 1 and "bad <height> <reason>" at the first height that breaks one.
With --vectors it also recomputes every block's vector ("Block vectors" in docs/format.md) and
compares it with CHAIN_DIR/vectors: "vectors <records> match" or "bad <height> vector ...".
It shares no code with the daemon on purpose: it checks that the format document is complete.
"""
import hashlib
import json
import math
import os
import re
import struct
import sys

SEGMENT = re.compile(r"^segment-(\d{20})\.chain$")


def fail(height, reason):
    print(f"bad {height} {reason}")
    sys.exit(1)


def decode_block(enc):
    if len(enc) < 57 or enc[0] != 1:
        return None
    height, ts = struct.unpack_from("<QQ", enc, 1)
    prev = enc[17:49]
    uid, pid = struct.unpack_from("<II", enc, 49)
    at, fields = 57, []
    for _ in range(5):
        if at + 4 > len(enc):
            return None
        (n,) = struct.unpack_from("<I", enc, at)
        if at + 4 + n > len(enc):
            return None
        fields.append(enc[at + 4 : at + 4 + n].decode("utf-8"))
        at += 4 + n
    if at != len(enc):
        return None
    return {"height": height, "prev": prev, "plugin": fields[2], "operation": fields[3], "data": fields[4],
            "timestamp_ns": ts, "uid": uid}


BLOCKS = []


def torn_record(rest, at):
    """Whether the record at file offset `at` (`rest` runs to the end of the file) is torn."""
    nonzero_end = len(rest.rstrip(b"\0"))
    if len(rest) < 8:
        return True
    n, check = struct.unpack_from("<II", rest, 0)
    if check != n ^ 0xFFFFFFFF:
        return nonzero_end < 8
    total = 8 + n + 36
    if len(rest) < total or nonzero_end <= total - 36:
        return True
    return (nonzero_end < total and (at + nonzero_end) % 512 == 0
            and (hashlib.sha256(rest[8 : 8 + n]).digest() + b"BLK\n")[: nonzero_end - 8 - n]
            == rest[8 + n : nonzero_end])


def interrupted_creation(data, first, chain_id):
    """A newest segment whose header is missing, torn or zero and holds no complete record."""
    header = data[:40]
    expected = b"OPDBSEG\0" + struct.pack("<I", 1) + bytes(4) + struct.pack("<Q", first) + chain_id
    z = len(header.rstrip(b"\0"))
    return header[:z] == expected[:z] and (len(data) <= 40 or torn_record(data[40:], 40))


def main(directory):
    names = sorted(
        (int(m.group(1)), n) for n in os.listdir(directory) if (m := SEGMENT.match(n))
    )
    if not names:
        fail(0, "no segments")
    expected, prev_hash, chain_id, head = 0, bytes(32), None, None
    for index, (first, name) in enumerate(names):
        data = open(os.path.join(directory, name), "rb").read()
        last_segment = index == len(names) - 1
        if (last_segment and chain_id is not None and first == expected
                and interrupted_creation(data, first, chain_id)):
            return report(expected, head, torn=False, note=f" interrupted-creation {name}")
        if len(data) < 40 or data[:8] != b"OPDBSEG\0" or struct.unpack_from("<I", data, 8)[0] != 1:
            fail(expected, f"{name}: bad header")
        if data[12:16] != bytes(4) or struct.unpack_from("<Q", data, 16)[0] != first:
            fail(expected, f"{name}: bad header")
        if first != expected:
            fail(expected, f"{name} starts at {first}")
        if chain_id is None:
            chain_id = data[24:40]
        elif data[24:40] != chain_id:
            fail(expected, f"{name}: another chain")
        at = 40
        while at < len(data):
            rest = data[at:]
            nonzero_end = len(rest.rstrip(b"\0"))
            if len(rest) < 8:
                if last_segment:
                    return report(expected, head, torn=True)
                fail(expected, "incomplete record in a sealed segment")
            n, check = struct.unpack_from("<II", rest, 0)
            if check != n ^ 0xFFFFFFFF:
                if last_segment and nonzero_end < 8:
                    return report(expected, head, torn=True)
                fail(expected, "damaged record length")
            total = 8 + n + 36
            if len(rest) < total or nonzero_end <= total - 36:
                if last_segment:
                    return report(expected, head, torn=True)
                fail(expected, "incomplete record in a sealed segment")
            enc, stored, marker = rest[8 : 8 + n], rest[8 + n : 40 + n], rest[40 + n : total]
            zeros_at = at + nonzero_end  # file offset where the final zero run starts
            if (last_segment and nonzero_end < total and zeros_at % 512 == 0
                    and (hashlib.sha256(enc).digest() + b"BLK\n")[: nonzero_end - 8 - n]
                    == rest[8 + n : nonzero_end]):
                # A power cut lost the record's last sector(s): torn, not damaged.
                return report(expected, head, torn=True)
            if marker != b"BLK\n":
                fail(expected, "damaged end marker")
            block_hash = hashlib.sha256(enc).digest()
            if block_hash != stored:
                fail(expected, "hash mismatch")
            try:
                block = decode_block(enc)
            except UnicodeDecodeError:
                block = None
            if block is None:
                fail(expected, "block does not decode")
            if block["height"] != expected:
                fail(expected, f"record holds height {block['height']}")
            if expected == 0:
                genesis = json.loads(block["data"])
                if (block["prev"] != bytes(32) or block["plugin"] != "opdbus-blockchain"
                        or block["operation"] != "genesis" or genesis.get("chain_id") != chain_id.hex()):
                    fail(0, "not a genesis block of this chain")
            elif block["prev"] != prev_hash:
                fail(expected, "prev_hash does not link")
            elif block["timestamp_ns"] < BLOCKS[-1]["timestamp_ns"]:
                fail(expected, "timestamp earlier than the block before")
            prev_hash, head = block_hash, (expected, block_hash)
            block["hash"] = block_hash
            BLOCKS.append(block)
            expected += 1
            at += total
    return report(expected, head, torn=False)


def report(blocks, head, torn, note=""):
    height, block_hash = head
    print(f"intact {blocks} {height} {block_hash.hex()}" + (" torn-tail" if torn else "") + note)
    return 0


DIM = 256


def features(plugin, operation, data_text):
    out = [(f"plugin:{plugin}", 2.0), (f"operation:{operation}", 1.0),
           (f"plugin+operation:{plugin}/{operation}", 1.0)]
    try:
        value = json.loads(data_text)
    except ValueError:
        value = data_text
    leaves = [0]

    def walk(v, path):
        child = (lambda k: k) if path == "" else (lambda k: f"{path}.{k}")
        if isinstance(v, dict) and v:
            for k in sorted(v):
                walk(v[k], child(k))
        elif isinstance(v, list) and v:
            for item in v:
                walk(item, child("[]"))
        elif leaves[0] < 4096:
            leaves[0] += 1
            out.append((f"key:{path}", 0.5))
            text = json.dumps(v, ensure_ascii=False, separators=(",", ":"))
            out.append((f"value:{path}={text}", 1.0))
            if isinstance(v, str):
                for token in re.split(r"[^\w]|_", v):
                    if token:
                        out.append((f"token:{token.lower()}", 0.25))

    walk(value, "")
    return out


def f32(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]


def block_vector(plugin, operation, data_text):
    sums = [0.0] * DIM
    for feature, weight in features(plugin, operation, data_text):
        digest = hashlib.sha256(feature.encode()).digest()
        bucket = struct.unpack_from("<I", digest, 0)[0] % DIM
        sums[bucket] += -weight if digest[4] & 1 else weight
    norm = math.sqrt(sum(x * x for x in sums))
    if norm == 0:
        return [0] * DIM
    out = []
    for x in sums:
        scaled = f32(f32(x / norm) * 127.0)
        q = math.floor(abs(scaled) + 0.5) * (1 if scaled >= 0 else -1)
        out.append(max(-127, min(127, q)))
    return out


def name_key(name):
    return struct.unpack_from("<Q", hashlib.sha256(name.encode()).digest(), 0)[0]


def check_vectors(directory):
    data = open(os.path.join(directory, "vectors"), "rb").read()
    if data[:8] != b"OPDBVEC\0" or struct.unpack_from("<II", data, 8) != (1, DIM):
        print("bad 0 vector file header")
        return 1
    record_len = DIM + 36
    records = (len(data) - 32) // record_len
    for height in range(min(records, len(BLOCKS))):
        block = BLOCKS[height]
        at = 32 + height * record_len
        stored = [b - 256 if b > 127 else b for b in data[at:at + DIM]]
        ts, uid, plugin, operation, prefix = struct.unpack_from("<QIQQQ", data, at + DIM)
        expected = (block["timestamp_ns"], block["uid"], name_key(block["plugin"]),
                    name_key(block["operation"]), struct.unpack_from("<Q", block["hash"], 0)[0])
        if stored != block_vector(block["plugin"], block["operation"], block["data"]):
            print(f"bad {height} vector differs")
            return 1
        if (ts, uid, plugin, operation, prefix) != expected:
            print(f"bad {height} vector record fields differ")
            return 1
    print(f"vectors {records} match")
    return 0


if __name__ == "__main__":
    if sys.argv[1] == "--vectors":
        status = main(sys.argv[2])
        sys.exit(status or check_vectors(sys.argv[2]))
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1]))
