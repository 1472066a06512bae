# hardkey: `make test` runs every check CI runs; `make demo` runs the tour on this machine.

# Debian packages the tests and the demo need: openssl (independent signature checks),
# softhsm2 (a PKCS#11 token), opensc (pkcs11-tool), p11-kit (remote modules), swtpm and
# libtss2-dev (a TPM 2.0 emulator and the TSS it is driven through), tpm2-tools and
# tpm2-openssl (independent TPM tools for the interop tests); cmake, clang, libclang-dev and
# golang-go (building BoringSSL for the tls crate) and curl (a TLS client independent of ours);
# tpm2-abrmd, its TCTI and dbus (a TPM resource manager on a private bus, for the tests of
# many processes sharing one TPM); python3-prometheus-client (Python's Prometheus text parser,
# which checks what `hardkey serve --metrics` exposes); libtpm2-pkcs11-1 and libtpm2-pkcs11-tools (tpm2-pkcs11, a
# second PKCS#11 implementation, on swtpm), libnss3 and libnss3-tools (NSS softokn, a third,
# and certutil to make its database). The tests load both modules by path: the p11-kit
# module file libtpm2-pkcs11-1 installs plays no part in them.
APT_PACKAGES := openssl ca-certificates pkg-config softhsm2 opensc p11-kit p11-kit-modules \
	swtpm swtpm-tools libtss2-dev tpm2-tools tpm2-openssl \
	cmake clang libclang-dev golang-go curl strace \
	tpm2-abrmd libtss2-tcti-tabrmd0 dbus \
	libtpm2-pkcs11-1 libtpm2-pkcs11-tools libnss3 libnss3-tools \
	python3-prometheus-client

CARGO ?= cargo

.PHONY: bench-scale all deps test fmt-check clippy doc unit soak fuzz fuzz-smoke demo bench bench-tls man clean

all: test

deps:
	@scripts/ensure-deps.sh $(APT_PACKAGES)

test: deps fmt-check clippy doc unit fuzz-smoke

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets --all-features -- -D warnings

doc:
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --workspace --all-features --no-deps --quiet

# The TPM tests provoke TSS errors on purpose (wrong auth, a TPM restarted under load); the
# TSS's own stderr logging is silenced unless TSS2_LOG is set.
unit:
	TSS2_LOG="$${TSS2_LOG:-all+none}" $(CARGO) test --workspace --all-features

# The long forms of the tests `make test` runs short (HARDKEY_SOAK=1): swtpm SIGKILLed and
# restarted 20 times under load; hardkey SIGKILLed 50 times during each kind of provisioning;
# 20,000 mixed operations over every device (and again with 60% of futures dropped); 20,000
# through a storm of PKCS#11 faults.
soak: deps
	HARDKEY_SOAK=1 TSS2_LOG="$${TSS2_LOG:-all+none}" $(CARGO) test -p swtpm-tests --test recovery -- --nocapture
	HARDKEY_SOAK=1 TSS2_LOG="$${TSS2_LOG:-all+none}" $(CARGO) test -p hardkey-cli --test interrupted -- --nocapture
	HARDKEY_SOAK=1 TSS2_LOG="$${TSS2_LOG:-all+none}" $(CARGO) test -p softhsm-tests --test soak -- --nocapture
	HARDKEY_SOAK=1 TSS2_LOG="$${TSS2_LOG:-all+none}" $(CARGO) test -p softhsm-tests --test faults -- --nocapture storm

# The fuzz targets of the parsers (fuzz/: its own cargo package, built with the nightly
# toolchain by cargo-fuzz, outside the workspace). `make fuzz` runs each for FUZZ_SECONDS,
# `make fuzz-smoke` (part of `make test`) for FUZZ_SMOKE_SECONDS. libFuzzer adds the inputs it
# finds to its first corpus directory, a scratch one under fuzz/target/corpus, so the committed
# seeds in fuzz/corpus/<target> stay as they are. A crash ends that target's run (the others
# still run, then make fails) and is saved in fuzz/artifacts/<target>/; replay it with
# `cargo +nightly fuzz run <target> <file>` in fuzz/.
FUZZ_TARGETS := uri keyfile public_key signature cert_chain pcr_selection http_head csr \
	attestation
FUZZ_SECONDS ?= 600
FUZZ_SMOKE_SECONDS ?= 5
FUZZ := $(CARGO) +nightly fuzz

# $(call fuzz-each,SECONDS,EXTRA LIBFUZZER FLAGS)
define fuzz-each
	cd fuzz && $(FUZZ) build
	cd fuzz && failed=; for t in $(FUZZ_TARGETS); do \
		mkdir -p target/corpus/$$t || exit 1; \
		dict=; if [ -f dict/$$t.dict ]; then dict=-dict=dict/$$t.dict; fi; \
		echo "fuzz $$t for $(1) s"; \
		$(FUZZ) run $$t target/corpus/$$t corpus/$$t -- \
			-max_total_time=$(1) $(2) $$dict || failed="$$failed $$t"; \
	done; \
	if [ -n "$$failed" ]; then \
		echo "fuzz: crashes in$$failed (inputs in fuzz/artifacts/)" >&2; exit 1; \
	fi
endef

fuzz: deps
	$(call fuzz-each,$(FUZZ_SECONDS),-print_final_stats=1)

fuzz-smoke: deps
	$(call fuzz-each,$(FUZZ_SMOKE_SECONDS),)

# The tour: swtpm and a SoftHSM token under target/demo/, driven by the hardkey command.
demo: deps
	$(CARGO) build --release --quiet -p hardkey-cli
	scripts/demo.sh
	$(CARGO) run --release --quiet -p hardkey-soft --example demo

bench: deps
	$(CARGO) bench -p hardkey-soft --bench pool_overhead
	$(CARGO) bench -p softhsm-tests --bench pkcs11_throughput
	TSS2_LOG="$${TSS2_LOG:-all+none}" $(CARGO) bench -p swtpm-tests --bench tpm_throughput
	$(MAKE) bench-tls
	$(MAKE) bench-scale

# `hardkey serve` with 10,000 keys and certificates on one SoftHSM token and as TPM key files:
# ready time (vs pkcs11-tool listing the same keys), own memory per key, handshake p50/p99.
# HARDKEY_SCALE_KEYS, HARDKEY_SCALE_HANDSHAKES and HARDKEY_SCALE_DEVICES set the sizes.
bench-scale: deps
	TSS2_LOG="$${TSS2_LOG:-all+none}" $(CARGO) bench -p hardkey-cli --bench scale

# The seed talk's experiment (100 concurrent handshakes on a 200 ms key, one server thread)
# and handshake throughput on SoftHSM and swtpm keys. HARDKEY_BENCH_DELAY_MS sets the delay.
bench-tls: deps
	TSS2_LOG="$${TSS2_LOG:-all+none}" $(CARGO) bench -p hardkey-tls --bench tls_handshakes

# Man pages from the clap definitions: target/man/hardkey.1 and one page per command.
man:
	$(CARGO) run --quiet -p hardkey-cli -- man --out-dir target/man

clean:
	$(CARGO) clean
	rm -rf target/demo
