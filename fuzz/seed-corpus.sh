#!/bin/sh
# Seeds fuzz/corpus/decode with the golden vectors of crates/format/tests/golden, each behind
# the selector byte of its decoder (0 value, 1 record, 2 operation, 3 batch, 4 record state).
set -eu
cd "$(dirname "$0")"
mkdir -p corpus/decode
for f in ../crates/format/tests/golden/*.hex; do
    name=$(basename "$f" .hex)
    case "$name" in
        value_*) selector=00 ;;
        record_state_*) selector=04 ;;
        record_*) selector=01 ;;
        operation_*) selector=02 ;;
        batch_*) selector=03 ;;
        *) echo "skipping $f: unknown kind" >&2; continue ;;
    esac
    { echo "$selector"; sed 's/#.*//' "$f"; } | xxd -r -p > "corpus/decode/golden-$name"
done
ls corpus/decode | wc -l

# Seeds fuzz/corpus/frames with the example frames of docs/protocol.md (crates/protocol/src/
# frame.rs and message.rs check them byte for byte): each alone, and all of them as one
# stream. The first byte is the target's selector: 3F = 64-byte chunks and the default frame
# limit, 00 = 1-byte chunks. Plus compressed payloads (type 7F): the documented Ping in a
# hand-written zstd frame, and, when the zstd command is installed, an Ops batch of 20
# operations compressed by it (with and without a checksum).
mkdir -p corpus/frames
n11=$(printf '11%.0s' $(seq 16))
n22=$(printf '22%.0s' $(seq 16))
ping=00000004B716042A
ack=00000005B71603AC02
hello=0000001DB716010100${n11}086275677301AC02
enroll=0000000CB7160810627A74315F616263
ping_zstd=00000011B7167F0428B52FFD2004210000B716042A
close=00000008B716060006627965
ops_empty=00000006B71602040500
ops_delete=00000038B71602AC02AE020100${n11}030980A0ABFEF962030862756773${n22}00
pull=0000002AB71607AC020200${n11}0700${n22}01
snapshot=00000043B71609AC020101010862756773${n22}010900${n11}010A7469746C65454372617368090101010103
snapshot_ack=00000004B7160A01
for name in ping ack hello enroll close ops_empty ops_delete pull snapshot snapshot_ack ping_zstd; do
    eval "frame=\$$name"
    echo "3F$frame" | xxd -r -p > "corpus/frames/doc-$name"
done
echo "00$hello$pull$snapshot$snapshot_ack$ack$ops_delete$ops_empty$ack$ping$ping_zstd$close" | xxd -r -p \
    > corpus/frames/doc-session
if command -v zstd > /dev/null; then
    # Ops { from: 0, to: 1 } with 20 deletes: the first names origin 1111…11 and "bugs", the
    # others refer back to them.
    ops=B716020001 # header, type, from 0, to 1
    ops="${ops}1400${n11}030980A0ABFEF962030862756773${n22}00"
    for seq in 04 05 06 07 08 09 0A 0B 0C 0D 0E 0F 10 11 12 13 14 15 16; do
        ops="${ops}01${seq}0980A0ABFEF9620301${n22}00"
    done
    len=$(( ${#ops} / 2 ))                                     # < 16384: a 2-byte varint
    varint=$(printf '%02X%02X' $(( (len & 0x7F) | 0x80 )) $(( len >> 7 )))
    for check in check no-check; do
        compressed=$(echo "$ops" | xxd -r -p | zstd -q -1 --$check -c | xxd -p | tr -d '\n')
        payload="B7167F$varint$compressed"
        echo "3F$(printf '%08X' $(( ${#payload} / 2 )))$payload" | xxd -r -p \
            > "corpus/frames/zstd-ops-$check"
    done
else
    echo "zstd not installed: no compressed Ops seeds" >&2
fi
ls corpus/frames | wc -l

# Seeds fuzz/corpus/handshake (blazedb_protocol::fuzz::handshake; selector bits 0-2 = step,
# bit 7 = P-256, else X25519): well-formed first messages for both suites (P-256: the
# generator point; X25519: the base point u = 9), for the parser (step 0) and the responder
# (step 1), and real sealed payloads left intact for step 5 (length, offset and cut bytes,
# no mask: the payload must open).
mkdir -p corpus/handshake
g=046B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C2964FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5
u9=09$(printf '00%.0s' $(seq 31))
echo "80 01 $g" | xxd -r -p > corpus/handshake/first-p256
echo "81 01 $g" | xxd -r -p > corpus/handshake/read-first-p256
echo "00 02 $u9" | xxd -r -p > corpus/handshake/first-25519
echo "01 02 $u9" | xxd -r -p > corpus/handshake/read-first-25519
echo "02 $(printf '04%.0s' $(seq 96))" | xxd -r -p > corpus/handshake/second-25519
echo "03 $(printf '04%.0s' $(seq 64))" | xxd -r -p > corpus/handshake/third-25519
echo "04 0010 $(printf '00%.0s' $(seq 16))" | xxd -r -p > corpus/handshake/open-25519
echo "05 000020 000000 FFFFFF" | xxd -r -p > corpus/handshake/sealed-short
echo "85 01FFF0 000000 FFFFFF" | xxd -r -p > corpus/handshake/sealed-two-chunks-p256
echo "05 020000 010000 FFFFFF 01" | xxd -r -p > corpus/handshake/sealed-flip-in-third-chunk
ls corpus/handshake | wc -l

# Seeds fuzz/corpus/token (blazedb_protocol::fuzz::token; the input is the text) with tokens
# of both suites, for the P-256 generator and the X25519 base point as server keys, and a few
# near misses.
mkdir -p corpus/token
id=$(printf '01%.0s' $(seq 16))
secret=$(printf '02%.0s' $(seq 32))
token() {
    printf 'bzt1_%s' "$(echo "$id$secret$1" | xxd -r -p | basenc --base64url | tr -d '=\n')"
}
token "01$g" > corpus/token/p256
token "02$u9" > corpus/token/x25519
printf '  %s\n' "$(token "02$u9")" > corpus/token/x25519-whitespace
token "03$u9" > corpus/token/unknown-suite
token "01$u9" > corpus/token/wrong-key-length
printf 'bzt1_' > corpus/token/prefix-only
ls corpus/token | wc -l
