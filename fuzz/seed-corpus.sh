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
