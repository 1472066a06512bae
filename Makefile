# hardkey: `make test` runs every check CI runs; `make demo` runs the tour on this machine.

# Debian packages the tests and the demo need: openssl (independent signature checks),
# softhsm2 (a PKCS#11 token), opensc (pkcs11-tool), p11-kit (remote modules), swtpm and
# libtss2-dev (a TPM 2.0 emulator and the TSS it is driven through), tpm2-tools and
# tpm2-openssl (independent TPM tools for the interop tests); cmake, clang, libclang-dev and
# golang-go (building BoringSSL for the tls crate) and curl (a TLS client independent of ours);
# tpm2-abrmd, its TCTI and dbus (a TPM resource manager on a private bus, for the tests of
# many processes sharing one TPM).
APT_PACKAGES := openssl ca-certificates pkg-config softhsm2 opensc p11-kit p11-kit-modules \
	swtpm swtpm-tools libtss2-dev tpm2-tools tpm2-openssl \
	cmake clang libclang-dev golang-go curl strace \
	tpm2-abrmd libtss2-tcti-tabrmd0 dbus

CARGO ?= cargo

.PHONY: all deps test fmt-check clippy doc unit demo bench bench-tls man clean

all: test

deps:
	@scripts/ensure-deps.sh $(APT_PACKAGES)

test: deps fmt-check clippy doc unit

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
