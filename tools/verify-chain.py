#!/usr/bin/env python3
"""Independent verifier of an opdbus-blockchain chain directory, written from docs/format.md.

Usage: verify-chain.py CHAIN_DIR
Exit 0 and "intact <blocks> <head height> <head hash>" when every rule holds,
exit 1 and "bad <height> <reason>" at the first height that breaks one.
It shares no code with the daemon on purpose: it checks that the format document is complete.
"""
import hashlib
import json
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
    return {"height": height, "prev": prev, "plugin": fields[2], "operation": fields[3], "data": fields[4]}


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
            prev_hash, head = block_hash, (expected, block_hash)
            expected += 1
            at += total
    return report(expected, head, torn=False)


def report(blocks, head, torn):
    height, block_hash = head
    print(f"intact {blocks} {height} {block_hash.hex()}" + (" torn-tail" if torn else ""))
    sys.exit(0)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    main(sys.argv[1])
