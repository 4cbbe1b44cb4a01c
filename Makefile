# iscsimple -- see README.md. Everything that touches the kernel runs in the
# lab VM (tests/lab/): this machine's kernel need not have md or iSCSI.
CARGO ?= cargo

.PHONY: all build deps test unit lab lint demo bench fuzz clean-lab

all: build

build:
	$(CARGO) build --release

deps:
	bash tests/deps.sh
	bash tests/lab/build.sh

# lints, unit tests, then every lab scenario in its own VM; closing line "N passed, N failed"
test: deps
	bash tests/run-all.sh

unit:
	$(CARGO) test

# LAB_FILTER=substring selects scenarios
lab: deps
	bash tests/lab/lab.sh $(LAB_FILTER)

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets --features lab,crashpoints -- -D warnings

demo: deps
	bash tests/lab/demo.sh

# benchmarks in the lab VM (tests/lab/scenarios/bench.rs): ratios against
# baselines measured in the same run; target/bench/results.{md,json}
bench: deps
	bash tests/bench.sh

fuzz:
	bash tests/fuzz.sh

clean-lab:
	rm -rf /var/tmp/iscsimple/lab target/lab
