# stickyd: developer entry points. `make` alone prints the list.
#
# Everything here works from a fresh clone on Debian 12 as root (or with sudo):
# `make deps` installs only what is missing, and the other targets call it.

SHELL         := /bin/bash
.SHELLFLAGS   := -eu -o pipefail -c
.DEFAULT_GOAL := help
# Targets run in the order they are listed, even under `make -j`.
.NOTPARALLEL:

SWIFT   ?= swift
SWIFTC  ?= swiftc
PYTHON  ?= python3
CONFIG  ?= config/stickyd.yaml
PYTEST_ARGS ?= -q
FUZZ_SECONDS ?= 60
SOAK_SECONDS ?= 1800

# Debian packages: build deps (liburing; TLS is swift-nio-ssl's bundled
# BoringSSL, so no libssl-dev), and the tools that the tests (socat; openssl
# makes the mTLS certificates and the Kubernetes stand-in's CA; prlimit from
# util-linux caps descriptors; dnsmasq-base serves the DNS discovery tests'
# records without starting a system service; test_ecmp builds its network
# with iproute2's `ip netns`, runs BIRD 2 (bird2) on the router and the
# balancers, and pins the router's flows with nftables; Debian enables a
# bird.service whose stock config announces nothing, and the test runs its
# own BIRDs with their own sockets) and
# benchmarks (iperf3, wrk, haproxy, nginx stream) use.
APT_PACKAGES := liburing-dev pkg-config iperf3 wrk haproxy nginx \
                libnginx-mod-stream socat openssl util-linux systemd dnsmasq-base \
                iproute2 bird2 nftables
# Python packages as import-name:pip-name.
PY_PACKAGES  := grpc:grpcio grpc_tools:grpcio-tools \
                grpc_health.v1.health:grpcio-health-checking pytest:pytest \
                matplotlib:matplotlib

GREETER  := examples/greeter
PROTO_PY := $(GREETER)/helloworld_pb2.py $(GREETER)/helloworld_pb2_grpc.py

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: help deps proto build build-debug run test unit integration fuzz soak bench install clean

help: ## Show this list
	@echo "stickyd: a Layer-4 sticky TCP load balancer"
	@echo
	@echo "Usage: make <target>"
	@echo
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) \
	  | awk 'BEGIN {FS = ":.*## "}; {printf "  %-12s %s\n", $$1, $$2}'
	@echo
	@echo "Variables: SWIFT=$(SWIFT) PYTHON=$(PYTHON) CONFIG=$(CONFIG) PYTEST_ARGS='$(PYTEST_ARGS)'"

deps: ## Install missing Debian and Python packages (apt-get, pip)
	@missing=""; \
	for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' "$$p" 2>/dev/null | grep -q "install ok installed" \
	    || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "deps: apt-get install$$missing"; \
	  $(SUDO) apt-get update -qq; \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	else \
	  echo "deps: Debian packages present"; \
	fi
	@if ! $(PYTHON) -m pip --version >/dev/null 2>&1; then \
	  echo "deps: installing pip for $(PYTHON)"; \
	  $(SUDO) apt-get update -qq; \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-pip; \
	fi; \
	missing=""; \
	for spec in $(PY_PACKAGES); do \
	  mod="$${spec%%:*}"; pkg="$${spec#*:}"; \
	  $(PYTHON) -c "import $$mod" >/dev/null 2>&1 || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "deps: pip install$$missing"; \
	  $(PYTHON) -m pip install -q --disable-pip-version-check --root-user-action=ignore $$missing \
	    || $(PYTHON) -m pip install -q --disable-pip-version-check --root-user-action=ignore --break-system-packages $$missing; \
	else \
	  echo "deps: Python packages present"; \
	fi

proto: $(PROTO_PY) ## Generate the greeter's Python gRPC code (not committed)

$(PROTO_PY) &: $(GREETER)/helloworld.proto
	$(PYTHON) -m grpc_tools.protoc -I$(GREETER) --python_out=$(GREETER) \
	  --grpc_python_out=$(GREETER) $(GREETER)/helloworld.proto

build: ## Build stickyd, stickyctl and stickybench in release mode (.build/release/)
	$(SWIFT) build -c release

build-debug: ## Build stickyd in debug mode (.build/debug/stickyd)
	$(SWIFT) build

run: deps proto build ## Start 3 greeter pods and stickyd (CONFIG=config/stickyd.yaml); Ctrl-C stops all
	STICKYD_BIN="$(CURDIR)/.build/release/stickyd" \
	  CONFIG="$(CONFIG)" PYTHON="$(PYTHON)" examples/run-local.sh

test: deps proto build-debug unit ## Build (debug) and run every test
	$(MAKE) --no-print-directory integration STICKYD_BIN="$(CURDIR)/.build/debug/stickyd"

unit: ## Run the Swift unit tests (swift test)
	$(SWIFT) test

integration: proto ## Run the integration tests (pytest); STICKYD_BIN defaults to the debug binary
	STICKYD_BIN="$${STICKYD_BIN:-$(CURDIR)/.build/debug/stickyd}" \
	  $(PYTHON) -m pytest $(PYTEST_ARGS) Tests/integration

# Fuzz targets (docs/FUZZING.md): each is a libFuzzer harness in Fuzz/<Dir>/,
# built with libFuzzer and ASan (the toolchain ships both) in one of two ways:
# - FUZZ_SRC_<t>: the harness and the StickyCore files it needs, compiled as
#   one module by a single swiftc line (so it can reach internal helpers);
# - FUZZ_PKG_<t>: a product of the package in Fuzz/Package.swift, for code a
#   swiftc line cannot build (the config loader's Yams has C in it), built
#   with SwiftPM's --sanitize into .build/fuzz-spm, apart from the main build.
# The package is built whole (not --product), so the second such target
# finds it up to date: SwiftPM rebuilt everything when the product changed.
# Either way the binary lands in .build/fuzz/<t>. New inputs go to a working
# corpus under .build/fuzz, the committed seeds in Fuzz/<Dir>/corpus stay as
# they are, crashes go to Fuzz/<Dir>/crashes/ (ignored by git). To add a
# target: name it in FUZZ_TARGETS and give its FUZZ_DIR_ and FUZZ_SRC_ (or
# FUZZ_PKG_, with a target in Fuzz/Package.swift).
#
# A run stops after FUZZ_SECONDS, or after FUZZ_RUNS inputs if that comes
# first (`make fuzz-state-file FUZZ_RUNS=10000000 FUZZ_SECONDS=2400`).
# FUZZ_BUILD=debug builds without optimisation: about half the compile time
# and a third of the speed, the right trade for CI's short runs.
FUZZ_TARGETS := proxy-parser h2-tracker admin-grammar takeover-frame state-file config-loader
FUZZ_RUNS    ?=
FUZZ_BUILD   ?= release
FUZZ_DIR_proxy-parser := Fuzz/ProxyParser
FUZZ_SRC_proxy-parser := Sources/StickyCore/Address.swift Sources/StickyCore/ByteWriter.swift \
                         $(wildcard Sources/StickyCore/Proxy/*.swift)
FUZZ_DIR_h2-tracker   := Fuzz/H2Tracker
FUZZ_SRC_h2-tracker   := Sources/StickyCore/Address.swift Sources/StickyCore/ByteWriter.swift \
                         Sources/StickyCore/SplitMix64.swift $(wildcard Sources/StickyCore/HTTP2/*.swift)
# FUZZ_FLAGS_<t>: libFuzzer options of one target.
FUZZ_DIR_admin-grammar := Fuzz/AdminGrammar
FUZZ_FLAGS_admin-grammar := -max_len=512
FUZZ_SRC_admin-grammar := Sources/StickyCore/Admin/AdminCommand.swift Sources/StickyCore/Admin/AdminLineFramer.swift Sources/StickyCore/Address.swift \
                          Sources/StickyCore/Duration.swift Sources/StickyCore/Placement.swift \
                          Sources/StickyCore/Affinity/TargetState.swift
# AffinityExport's balancer half needs the balancer; its admin half does not.
FUZZ_DIR_takeover-frame := Fuzz/TakeoverFrame
FUZZ_SRC_takeover-frame := $(wildcard Sources/StickyCore/Takeover/*.swift) Sources/StickyCore/Address.swift \
                           Sources/StickyCore/Duration.swift Sources/StickyCore/Placement.swift \
                           $(filter-out %+Admin.swift %+Peers.swift,$(wildcard Sources/StickyCore/Affinity/*.swift)) $(wildcard Sources/StickyCore/ByteReader.swift)
# The state file needs the registry, which needs the config types: most of
# StickyCore, so it shares the SwiftPM build of the config loader's target.
FUZZ_DIR_state-file    := Fuzz/StateFile
FUZZ_PKG_state-file    := FuzzStateFile
FUZZ_DIR_config-loader := Fuzz/ConfigLoader
FUZZ_PKG_config-loader := FuzzConfigLoader
FUZZ_SWIFTC_OPT := $(if $(filter debug,$(FUZZ_BUILD)),-Onone,-O)
FUZZ_SPM := $(SWIFT) build -c $(FUZZ_BUILD) --package-path Fuzz --scratch-path "$(CURDIR)/.build/fuzz-spm" \
            --sanitize=fuzzer --sanitize=address -Xswiftc -sanitize=fuzzer
.PHONY: $(addprefix fuzz-,$(FUZZ_TARGETS))

fuzz: $(addprefix fuzz-,$(FUZZ_TARGETS)) ## Build and run every fuzz target for FUZZ_SECONDS each (default 60); crashes in Fuzz/*/crashes/
	@for t in $(FUZZ_TARGETS); do \
	  log=.build/fuzz/$$t.log; \
	  echo "fuzz: $$t: $$(awk '/stat::number_of_executed_units/ {print $$2}' $$log) executions" \
	       "in $$(awk '/^Done [0-9]+ runs in/ {print $$5}' $$log) s, built in $$(cat .build/fuzz/$$t.build-seconds) s"; \
	done

# One target: `make fuzz-h2-tracker FUZZ_SECONDS=30`. The log is kept for the
# summary `make fuzz` prints. SWIFT_BACKTRACE=enable=no: the Swift runtime's
# crash backtracer reads memory that ASan reports, burying the real failure.
$(addprefix fuzz-,$(FUZZ_TARGETS)): fuzz-%:
	mkdir -p .build/fuzz/corpus-$* $(FUZZ_DIR_$*)/crashes
	@start=$$SECONDS; \
	if [ -n "$(FUZZ_PKG_$*)" ]; then \
	  echo '$(FUZZ_SPM)'; \
	  $(FUZZ_SPM); \
	  cp "$$($(FUZZ_SPM) --show-bin-path)/$(FUZZ_PKG_$*)" .build/fuzz/$*; \
	else \
	  echo '$(SWIFTC) -sanitize=fuzzer,address -parse-as-library $(FUZZ_SWIFTC_OPT) -use-ld=lld $(FUZZ_DIR_$*)/*.swift ... -o .build/fuzz/$*'; \
	  $(SWIFTC) -sanitize=fuzzer,address -parse-as-library $(FUZZ_SWIFTC_OPT) -use-ld=lld \
	    $(wildcard $(FUZZ_DIR_$*)/*.swift) $(FUZZ_SRC_$*) -o .build/fuzz/$*; \
	fi; \
	echo $$((SECONDS - start)) > .build/fuzz/$*.build-seconds
	SWIFT_BACKTRACE=enable=no .build/fuzz/$* -max_total_time=$(FUZZ_SECONDS) $(if $(FUZZ_RUNS),-runs=$(FUZZ_RUNS)) \
	  $(FUZZ_FLAGS_$*) -print_final_stats=1 -artifact_prefix=$(FUZZ_DIR_$*)/crashes/ .build/fuzz/corpus-$* $(FUZZ_DIR_$*)/corpus 2>&1 \
	  | tee .build/fuzz/$*.log
	@# A binary built without coverage still runs, blind, and finds nothing.
	@# SwiftPM's --sanitize=fuzzer instruments only the fuzz package's own
	@# targets, not StickyCore (hence -Xswiftc -sanitize=fuzzer above): the
	@# harness alone had counters, every input took its one path, and
	@# libFuzzer warned and went on. Fail such a run.
	@if grep -q 'Is the code instrumented for coverage' .build/fuzz/$*.log \
	   || ! grep -Eq '^INFO: Loaded [0-9]+ modules +\([1-9][0-9]* inline 8-bit counters' .build/fuzz/$*.log; then \
	  echo "fuzz-$*: the binary has no coverage counters; libFuzzer would be guessing blind" >&2; exit 1; \
	fi

# The chaos soak (docs/SOAK.md): the debug daemon (or STICKYD_BIN) under
# byte-checked streams, kills, reloads, admin changes, upgrades and bursts
# for SOAK_SECONDS. The report, its JSON and the plot go to .build/soak/.
# SOAK_CI=1 makes it fail on corruption, misrouting or leaked descriptors.
soak: deps build-debug ## Chaos soak for SOAK_SECONDS (default 1800); report and plot in .build/soak/
	SOAK_SECONDS=$(SOAK_SECONDS) STICKYD_BIN="$${STICKYD_BIN:-$(CURDIR)/.build/debug/stickyd}" \
	  $(PYTHON) Tests/soak/soak.py

bench: deps build ## Compare stickyd with direct, HAProxy and nginx (Benchmarks/compare/run.sh)
	bash Benchmarks/compare/run.sh

PREFIX  ?= /usr/local
UNITDIR ?= /etc/systemd/system

install: build ## Install binaries, the unit and (if absent) /etc/stickyd/stickyd.yaml; DESTDIR, PREFIX
	install -D -m 0755 .build/release/stickyd $(DESTDIR)$(PREFIX)/bin/stickyd
	install -D -m 0755 .build/release/stickyctl $(DESTDIR)$(PREFIX)/bin/stickyctl
	@# Beside stickyctl: `stickyctl bench` runs the stickybench next to it.
	install -D -m 0755 .build/release/stickybench $(DESTDIR)$(PREFIX)/bin/stickybench
	sed 's#/usr/local/bin/#$(PREFIX)/bin/#g' systemd/stickyd.service > stickyd.service.tmp
	install -D -m 0644 stickyd.service.tmp $(DESTDIR)$(UNITDIR)/stickyd.service
	rm -f stickyd.service.tmp
	@# Never overwrite an operator's config.
	if [ ! -e $(DESTDIR)/etc/stickyd/stickyd.yaml ]; then \
	  install -D -m 0644 $(CONFIG) $(DESTDIR)/etc/stickyd/stickyd.yaml; \
	else echo "install: keeping the existing /etc/stickyd/stickyd.yaml"; fi
	@echo "install: now 'systemctl daemon-reload && systemctl enable --now stickyd' (see docs/OPERATIONS.md)"

clean: ## Remove build products and generated code
	rm -rf .build .pytest_cache $(PROTO_PY) $(GREETER)/__pycache__ Tests/integration/__pycache__ Tests/soak/__pycache__
