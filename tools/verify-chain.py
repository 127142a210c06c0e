#!/usr/bin/env python3
"""Independent verifier of an opdbus-blockchain chain directory, written from docs/format.md.

Usage: verify-chain.py [--vectors] CHAIN_DIR
Exit 0 and "intact <blocks> <head height> <head hash>" when every rule holds (then " torn-tail"
or " interrupted-creation <segment>" when the newest segment ends so; see docs/format.md; zeros
from a record boundary to the end of a segment are free space, not a torn tail),
exit 1 and "bad <height> <reason>" at the first height that breaks one of the hard rules.
Blocks that keep the hard rules but break a writer rule ("Field rules" in docs/format.md: what
the writer refuses now, older chains may hold such blocks) are not corruption: the intact line
then ends with " warning <count> <first height> <reason>", still exit 0.
With --vectors it also recomputes every block's vector ("Block vectors" in docs/format.md) and
compares it with CHAIN_DIR/vectors: "vectors <records> match" or "bad <height> vector ...".
It shares no code with the daemon on purpose: it checks that the format document is complete.
Every rule of "Verification rules" and "Field rules" is checked, timestamps and JSON data too.
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


NAME = re.compile(r"[A-Za-z0-9._:@/+-]{1,255}")
MAX_DEPTH = 64
MAX_MAGNITUDE = 300
STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
FLOAT = re.compile(r"-?([0-9]+)(?:\.([0-9]+))?(?:[eE]([-+]?)([0-9]+))?")


class Refused(ValueError):
    pass


def name_problem(field, name):
    """The first way `name` breaks the name rule, or None."""
    if NAME.fullmatch(name):
        return None
    if not name:
        return f"{field} is empty"
    if len(name) > 255:
        return f"{field} is longer than 255 bytes"
    at = next(i for i, c in enumerate(name) if not NAME.fullmatch(c))
    return f"{field} holds U+{ord(name[at]):04X} at character {at}"


def exact_integer(text):
    digits = text.lstrip("-")
    if len(digits) > 20 or not -(2 ** 63) <= int(text) <= 2 ** 64 - 1:
        raise Refused(f"integer {text[:40]} outside -2^63..2^64-1")
    return int(text)


def bounded_float(text):
    m = FLOAT.fullmatch(text)
    whole, frac, sign, exp = m.group(1), m.group(2) or "", m.group(3), m.group(4) or "0"
    digits = whole + frac
    first = next((i for i, d in enumerate(digits) if d != "0"), None)
    if first is not None:
        power = int(exp) if len(exp) < 12 else 10 ** 12
        magnitude = len(whole) - 1 - first + (-power if sign == "-" else power)
        if abs(magnitude) > MAX_MAGNITUDE:
            raise Refused(f"number {text[:40]} outside 1e-300 <= |x| < 1e301")
    return float(text)


def no_constants(name):
    raise Refused(f"{name}, which is not JSON")


def unique_keys(pairs):
    seen = set()
    for k, _ in pairs:
        if k in seen:
            raise Refused(f"the key {json.dumps(k)[:40]} twice in one object")
        seen.add(k)
    return dict(pairs)


def no_surrogates(value):
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
        elif isinstance(v, str) and any(0xD800 <= ord(c) <= 0xDFFF for c in v):
            raise Refused("a lone surrogate escape")


def data_problem(text):
    """The first way `text` breaks the data rules, or None."""
    depth = deepest = 0
    for c in "".join(re.findall(r"[\[\]{}]", STRING.sub("", text))):
        depth = depth + 1 if c in "[{" else max(depth - 1, 0)
        deepest = max(deepest, depth)
    if deepest > MAX_DEPTH:
        return f"data nests deeper than {MAX_DEPTH}"
    try:
        value = json.loads(text, parse_int=exact_integer, parse_float=bounded_float,
                           parse_constant=no_constants, object_pairs_hook=unique_keys)
        no_surrogates(value)
    except Refused as err:
        return f"data holds {err}"
    except ValueError as err:
        return f"data is not valid JSON ({err})"
    return None


JSON_SPACE = re.compile(r"[ \t\n\r]*")
JSON_TOKEN = re.compile(
    r'([\[\]{},:])|("(?:[^"\\\x00-\x1f]|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4})*")'
    r"|(-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?|true|false|null)")


def json_syntax_problem(text):
    """Whether `text` is one JSON value by RFC 8259's grammar alone (a hard rule: any depth,
    number text, escape and key allowed). Iterative, so any depth is checked in bounded stack."""
    stack, state, at = [], "value", 0
    while True:
        at = JSON_SPACE.match(text, at).end()
        if at == len(text):
            return None if state == "after" and not stack else f"data is not valid JSON (ends early at {at})"
        m = JSON_TOKEN.match(text, at)
        if not m:
            return f"data is not valid JSON (at character {at})"
        punct, string, scalar = m.groups()
        at = m.end()
        if state in ("value", "first") and (string or scalar):
            state = "after"
        elif state in ("value", "first") and punct in ("[", "{"):
            stack.append(punct)
            state = "first" if punct == "[" else "firstkey"
        elif state in ("key", "firstkey") and string:
            state = "colon"
        elif state == "colon" and punct == ":":
            state = "value"
        elif state == "after" and stack and punct == ",":
            state = "value" if stack[-1] == "[" else "key"
        elif (state in ("after", "first") and punct == "]" and stack and stack[-1] == "["
              or state in ("after", "firstkey") and punct == "}" and stack and stack[-1] == "{"):
            stack.pop()
            state = "after"
        else:
            return f"data is not valid JSON (unexpected {m.group(0)[:20]!r} at character {m.start()})"


def hard_name_problem(field, name):
    """The hard name rule: 1..255 bytes, no control character."""
    if not name:
        return f"{field} is empty"
    if len(name.encode()) > 255:
        return f"{field} is longer than 255 bytes"
    for i, c in enumerate(name):
        if ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F:
            return f"{field} holds the control character U+{ord(c):04X} at character {i}"
    return None


BLOCKS = []
WARNINGS = []  # (height, reason) of blocks that break only writer rules


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
            if nonzero_end == 0:
                break  # free space: only zeros from this record boundary on, the data ends here
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
            if BLOCKS and block["timestamp_ns"] < BLOCKS[-1]["timestamp_ns"]:
                fail(expected, "timestamp decreases")
            if expected > 0:
                problem = (hard_name_problem("plugin", block["plugin"])
                           or hard_name_problem("operation", block["operation"])
                           or json_syntax_problem(block["data"]))
                if problem:
                    fail(expected, problem)
                problem = (name_problem("plugin", block["plugin"])
                           or name_problem("operation", block["operation"])
                           or data_problem(block["data"]))
                if problem:
                    WARNINGS.append((expected, problem))
            if expected == 0:
                genesis = json.loads(block["data"])
                if (block["prev"] != bytes(32) or block["plugin"] != "opdbus-blockchain"
                        or block["operation"] != "genesis" or genesis.get("chain_id") != chain_id.hex()):
                    fail(0, "not a genesis block of this chain")
            elif block["prev"] != prev_hash:
                fail(expected, "prev_hash does not link")
            prev_hash, head = block_hash, (expected, block_hash)
            block["hash"] = block_hash
            BLOCKS.append(block)
            expected += 1
            at += total
    return report(expected, head, torn=False)


def report(blocks, head, torn, note=""):
    height, block_hash = head
    if WARNINGS:
        note += f" warning {len(WARNINGS)} {WARNINGS[0][0]} {WARNINGS[0][1]}"
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
