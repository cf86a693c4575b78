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
# frame.rs checks them byte for byte): each alone, and all of them as one stream. The first
# byte is the target's selector: 3F = 64-byte chunks and the default frame limit, 00 = 1-byte
# chunks.
mkdir -p corpus/frames
n11=$(printf '11%.0s' $(seq 16))
n22=$(printf '22%.0s' $(seq 16))
ping=00000004B716042A
ack=00000005B71603AC02
hello=0000001AB716010100${n11}0862756773
close=00000008B716060006627965
ops_empty=00000006B71602040500
ops_delete=00000038B71602AC02AE020100${n11}030980A0ABFEF962030862756773${n22}00
pull=0000002AB71607AC020200${n11}0700${n22}01
for name in ping ack hello close ops_empty ops_delete pull; do
    eval "frame=\$$name"
    echo "3F$frame" | xxd -r -p > "corpus/frames/doc-$name"
done
echo "00$hello$pull$ops_delete$ops_empty$ack$ping$close" | xxd -r -p > corpus/frames/doc-session
ls corpus/frames | wc -l
