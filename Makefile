# iscsimple -- see README.md. Everything that touches the kernel runs in the
# lab VM (tests/lab/): this machine's kernel need not have md or iSCSI.
CARGO ?= cargo
PREFIX ?= /usr
DESTDIR ?=
# man pages and completions, generated from the clap definitions
ASSETS := target/assets
BIN := target/release/iscsimple

.PHONY: all build assets install uninstall deb lintian deps test unit sim lab lint demo bench fuzz clean-lab

all: build

build:
	$(CARGO) build --release

assets: build
	rm -rf $(ASSETS)
	$(BIN) generate-assets $(ASSETS)

# The hooks and the unit name /usr/sbin/iscsimple: rewritten for another PREFIX.
# An existing config or label table is never overwritten.
install: assets
	install -D -m 755 $(BIN) $(DESTDIR)$(PREFIX)/sbin/iscsimple
	install -d -m 755 $(DESTDIR)/etc/xen/scripts $(DESTDIR)/etc/libvirt/hooks/qemu.d $(DESTDIR)/etc/iscsimple
	sed 's|/usr/sbin/iscsimple|$(PREFIX)/sbin/iscsimple|' hotplug/block-iscsimple > $(DESTDIR)/etc/xen/scripts/block-iscsimple
	sed 's|/usr/sbin/iscsimple|$(PREFIX)/sbin/iscsimple|' hotplug/libvirt-qemu-hook > $(DESTDIR)/etc/libvirt/hooks/qemu.d/iscsimple
	chmod 755 $(DESTDIR)/etc/xen/scripts/block-iscsimple $(DESTDIR)/etc/libvirt/hooks/qemu.d/iscsimple
	[ -e $(DESTDIR)/etc/iscsimple/iscsimple.toml ] || install -m 644 etc/iscsimple.toml $(DESTDIR)/etc/iscsimple/iscsimple.toml
	[ -e $(DESTDIR)/etc/xen/scripts/block-iscsimple-tab.conf ] || install -m 644 etc/block-iscsimple-tab.conf $(DESTDIR)/etc/xen/scripts/block-iscsimple-tab.conf
	install -d -m 755 $(DESTDIR)$(PREFIX)/lib/systemd/system
	sed 's|/usr/sbin/iscsimple|$(PREFIX)/sbin/iscsimple|' etc/iscsimple-watch.service > $(DESTDIR)$(PREFIX)/lib/systemd/system/iscsimple-watch.service
	install -d -m 755 $(DESTDIR)$(PREFIX)/share/man/man8
	install -m 644 $(ASSETS)/man/*.8 $(DESTDIR)$(PREFIX)/share/man/man8/
	install -D -m 644 $(ASSETS)/completions/iscsimple.bash $(DESTDIR)$(PREFIX)/share/bash-completion/completions/iscsimple
	install -D -m 644 $(ASSETS)/completions/_iscsimple $(DESTDIR)$(PREFIX)/share/zsh/vendor-completions/_iscsimple
	install -D -m 644 $(ASSETS)/completions/iscsimple.fish $(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d/iscsimple.fish
	install -D -m 644 README.md $(DESTDIR)$(PREFIX)/share/doc/iscsimple/README.md
	install -D -m 644 doc/status.schema.json $(DESTDIR)$(PREFIX)/share/doc/iscsimple/status.schema.json

# Leaves the config, the label table and /var/lib/iscsimple (the admin's data).
uninstall:
	rm -f $(DESTDIR)$(PREFIX)/sbin/iscsimple $(DESTDIR)/etc/xen/scripts/block-iscsimple \
	      $(DESTDIR)/etc/libvirt/hooks/qemu.d/iscsimple \
	      $(DESTDIR)$(PREFIX)/lib/systemd/system/iscsimple-watch.service \
	      $(DESTDIR)$(PREFIX)/share/man/man8/iscsimple.8 $(DESTDIR)$(PREFIX)/share/man/man8/iscsimple-*.8 \
	      $(DESTDIR)$(PREFIX)/share/bash-completion/completions/iscsimple \
	      $(DESTDIR)$(PREFIX)/share/zsh/vendor-completions/_iscsimple \
	      $(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d/iscsimple.fish
	rm -rf $(DESTDIR)$(PREFIX)/share/doc/iscsimple

# target/debian/iscsimple_VERSION-1_amd64.deb (cargo-deb: cargo install cargo-deb)
deb: assets
	$(CARGO) deb --no-build --strip

lintian: deb
	lintian --info --display-info target/debian/iscsimple_*.deb

deps:
	bash tests/deps.sh
	bash tests/lab/build.sh

# lints, unit tests, packaging, then every lab scenario in its own VM; closing line "N passed, N failed"
test: deps
	bash tests/run-all.sh

# unit tests and the simulator's default budget (20,000 sequences)
unit:
	$(CARGO) test --features sim

# the simulator alone (src/sim, tests/sim.rs), optimised: SEEDS sequences
# from seed FROM; SIM_SEED=N make sim replays seed N step by step
SEEDS ?= 100000
FROM ?= 0
sim:
	SIM_SEEDS=$(SEEDS) SIM_FROM=$(FROM) $(CARGO) test --release --features sim --test sim -- --nocapture

# LAB_FILTER=substring selects scenarios
lab: deps
	bash tests/lab/lab.sh $(LAB_FILTER)

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets --features lab,crashpoints,sim -- -D warnings

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
