#!/usr/bin/env bash
# The README's main job, end to end on real data:
#   create the environment → build data/flickr8k.h5 from Flickr8k (stable image split; an older
#   file with the seeded split is kept aside and rebuilt) → train the 4-task random split
#   with finetune and with MAS (FAISS evaluation after every task) → results table, plots, gallery.
#
# usage: bash scripts/main_job.sh [FLICKR8K_DIR]
#   FLICKR8K_DIR holds images/ (or Images/) and captions.txt; default $FACTMAS_FLICKR8K, else
#   data/flickr8k, else ../shared/flickr8k beside the project.
#   FACTMAS_OUT (default runs/main) is where the runs and the table go.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
t0=$(date +%s)
src="${1:-${FACTMAS_FLICKR8K:-}}"
if [ -z "$src" ]; then
  for d in "$root/data/flickr8k" "$root/../shared/flickr8k"; do [ -d "$d" ] && { src="$d"; break; }; done
fi
[ -n "$src" ] && [ -f "$src/captions.txt" ] || {
  echo "main_job: no Flickr8k folder (images/ + captions.txt): pass it as the first argument or set FACTMAS_FLICKR8K; see README 'Getting Flickr8k'" >&2
  exit 2; }
images="$src/images"; [ -d "$images" ] || images="$src/Images"
out="${FACTMAS_OUT:-$root/runs/main}"
h5="${FACTMAS_DATA:-$root/data/flickr8k.h5}"

bash "$root/scripts/setup_env.sh"
py="${FACTMAS_VENV:-$root/.venv}/bin/python"
t1=$(date +%s)

# An existing file is reused only when it has the default (stable, file-name hash) image split. A
# file built before that default (its provenance has no image_split option: the seeded permutation)
# has other val and test images, so runs on it never mix with runs on the default split: it is kept
# aside, with its feature cache, under a name that says its split, and the default file is built.
if [ -f "$h5" ]; then
  rule=$("$py" -m data_prep.inspect "$h5" --image-split-rule) || {
    echo "main_job: $h5 cannot be read (error above): move or delete it, and the main job builds it again" >&2
    exit 2; }
  if [ "$rule" = hash ]; then
    echo "[main] dataset $h5 exists (image split: hash, the default): reusing it (delete it to rebuild)"
  else
    aside="${h5%.h5}.${rule}-split-$(date +%Y%m%d-%H%M%S).h5"
    echo "[main] dataset $h5 has the '$rule' image split, not the default stable 'hash' split (other val and test images): kept as $aside, rebuilding $h5"
    mv "$h5" "$aside"
    if [ -e "$h5.features" ]; then mv "$h5.features" "$aside.features"; fi
  fi
fi
if [ ! -f "$h5" ]; then
  echo "[main] building $h5 from $src"
  # The default file: the stable image split (train/val/test from each image's file name), facts on
  # at least 14 training images (thresholds counted without val and test images); the README's
  # tables use it.
  "$py" -m data_prep.flickr8k --images "$images" --captions "$src/captions.txt" --out "$h5"
fi
"$py" -m data_prep.inspect "$h5"
t2=$(date +%s)

# Earlier results are kept, never replaced: a previous main job's folder is renamed aside.
if [ -e "$out" ] && [ -n "$(ls -A "$out" 2>/dev/null)" ]; then
  kept="$out.previous-$(date +%Y%m%d-%H%M%S)"
  mv "$out" "$kept"
  echo "[main] $out held an earlier main job: kept as $kept"
fi
mkdir -p "$out"
# The pretrained backbone's frozen stages are computed once for every image (and its mirror image)
# into a feature cache beside the dataset, with all cores, before the two runs read it.
echo "[main] feature cache of the frozen backbone stages (reused when it exists)"
"$py" -m factmas.cli features --data "$h5"
t_cache=$(date +%s)

# The two runs are independent: on a machine with >= 2 cores they run side by side with one torch
# thread each (two 1-thread runs deliver more images/s than one 2-thread run, and a 1-thread run
# does not collapse when something else wants a core). FACTMAS_THREADS overrides the thread count.
# Each run's full log goes to $out/<method>.log; its progress lines (per task and epoch: loss and
# images/s, evaluations, Ω; every 30 s within a long stage: count, rate and time left, from
# factmas.progress) are shown here with the method's name in front.
cores=$(nproc 2>/dev/null || echo 1)
threads="${FACTMAS_THREADS:-$(( cores >= 2 ? cores / 2 : 1 ))}"
pids=()
for method in finetune mas; do
  echo "[main] training $method on random4_seed0 ($threads thread(s)) → $out/$method (log: $out/$method.log)"
  rm -f "$out/$method.status"
  { "$py" -m factmas.cli train --data "$h5" --split random4_seed0 --method "$method" --out "$out/$method" \
        --threads "$threads" 2>&1; echo $? > "$out/$method.status"; } \
    | tee "$out/$method.log" \
    | grep --line-buffered -E "epoch [0-9]+/|evaluation:|Ω updated|MAS Ω|feature cache|^factmas|Traceback" \
    | sed -u "s/^/[$method] /" &
  pids+=($!)
  [ "$cores" -ge 2 ] || wait "${pids[-1]}"
done
for pid in "${pids[@]}"; do wait "$pid" || true; done
status=0
for method in finetune mas; do
  s=$(cat "$out/$method.status" 2>/dev/null || echo 1)
  [ "$s" -eq 0 ] || { echo "[main] $method failed (exit $s); see $out/$method.log" >&2; status=$s; }
done
[ "$status" -eq 0 ] || exit "$status"
t3=$(date +%s)
# the headline (fact→image) table is shown once, at the very end; the other two as they are written
"$py" eval/compare.py "$out/finetune" "$out/mas" --out "$out/table" > /dev/null
"$py" eval/compare.py "$out/finetune" "$out/mas" --metric image_to_fact_map --out "$out/table_image_to_fact_map"
"$py" eval/compare.py "$out/finetune" "$out/mas" --metric image_to_fact_top5 --out "$out/table_image_to_fact_top5"
"$py" eval/compare.py "$out/finetune" "$out/mas" --metric fact_to_image_recall_at_1 --out "$out/table_fact_to_image_recall_at_1"
# What the two runs retrieve, side by side (static HTML, open $out/gallery/index.html in a browser)
"$py" -m factmas.cli gallery "$out/finetune" "$out/mas" --out "$out/gallery"
t4=$(date +%s)

cat <<MSG

[main] done in $((t4 - t0)) s (environment $((t1 - t0)) s, dataset $((t2 - t1)) s, feature cache $((t_cache - t2)) s, training + evaluation $((t3 - t_cache)) s)
[main] tables:       $out/table.md (fact→image mAP), $out/table_image_to_fact_map.md, $out/table_image_to_fact_top5.md,
[main]               $out/table_fact_to_image_recall_at_1.md (and .csv)
[main] per run:      $out/{finetune,mas}/results.json, results.md, *.png
[main] gallery:      $out/gallery/index.html (top facts and images of both runs, one colour scale)

[main] fact→image mAP (%, $out/table.md):
MSG
cat "$out/table.md"
