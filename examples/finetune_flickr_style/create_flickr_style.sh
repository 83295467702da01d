#!/usr/bin/env bash
# Writes the Flickr Style lists the fine-tuning net reads (ImageData layers):
# data/flickr_style/train.txt and test.txt, lines of "/absolute/path.jpg label".
#   bash examples/finetune_flickr_style/create_flickr_style.sh IMAGE_DIR
# IMAGE_DIR holds one folder per style, named as in style_names.txt with
# spaces as underscores (IMAGE_DIR/Long_Exposure/*.jpg, ...); a style's label
# is its line in style_names.txt, counted from 0. Caffe's version downloads the
# images from Flickr, which cannot be done here: gather them yourself. Every
# fifth image of a style (TEST_EVERY) goes to test.txt; both lists are shuffled.
set -euo pipefail
here=$(pwd)
cd "$(dirname "$0")/../.."
if [ $# -lt 1 ]; then
    echo "usage: $0 IMAGE_DIR  (one folder of images per style of style_names.txt)" >&2
    exit 2
fi
images=$1
case $images in /*) ;; *) images=$here/$images ;; esac
if [ ! -d "$images" ]; then
    echo "create_flickr_style.sh: no folder $images" >&2
    exit 2
fi
every=${TEST_EVERY:-5}
out=data/flickr_style
mkdir -p "$out"
train=$(mktemp) test=$(mktemp)
trap 'rm -f "$train" "$test"' EXIT
label=0
found=0
while IFS= read -r style; do
    folder="$images/${style// /_}"
    if [ -d "$folder" ]; then
        i=0
        while IFS= read -r -d '' file; do
            if [ $((i % every)) -eq $((every - 1)) ]; then
                echo "$file $label" >> "$test"
            else
                echo "$file $label" >> "$train"
            fi
            i=$((i + 1))
            found=$((found + 1))
        done < <(find "$folder" -maxdepth 1 -type f \( -iname '*.jpg' -o -iname '*.jpeg' \
            -o -iname '*.png' \) -print0 | sort -z)
    fi
    label=$((label + 1))
done < examples/finetune_flickr_style/style_names.txt
if [ "$found" -eq 0 ]; then
    echo "create_flickr_style.sh: no images in style folders of $images" \
        "(e.g. $images/Long_Exposure/*.jpg)" >&2
    exit 2
fi
shuf --random-source=<(yes) "$train" > "$out/train.txt"
shuf --random-source=<(yes) "$test" > "$out/test.txt"
echo "wrote $(wc -l < "$out/train.txt") training and $(wc -l < "$out/test.txt") test images" \
    "to $out/train.txt and $out/test.txt"
