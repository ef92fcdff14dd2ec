#!/usr/bin/env bash
# Install Debian's Fashion-MNIST (the default data set) when we can; otherwise say
# in one line that the demo falls back to scikit-learn's bundled digits.
set -u
DIR=/usr/share/datasets/fashion-mnist
if [ -f "$DIR/t10k-images-idx3-ubyte.gz" ]; then
    exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    if { apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; } >/dev/null 2>&1; then
        echo "installed Debian's dataset-fashion-mnist into $DIR"
        exit 0
    fi
fi
echo "fiqnn: Fashion-MNIST not installed (needs root and apt-get: apt-get install dataset-fashion-mnist); falling back to scikit-learn's digits"
