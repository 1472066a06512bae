#!/usr/bin/env bash
# `make demo`: the hardkey tour on emulators, under target/demo/.
#   1. start swtpm and a SoftHSM2 token (file backend) in target/demo/;
#   2. take ownership of the TPM;
#   3. provision a P-256 key in the TPM (persistent handle) and an RSA-2048 key on the token;
#   4. sign with each key and verify with openssl;
#   5. make a certificate for each key (self-signed, and a CSR), checked by openssl;
#   6. serve HTTPS on the TPM key (`hardkey serve`), fetched by curl and openssl s_client;
#   7. seal a secret to the TPM under a password and a PCR, unseal it;
#   8. bench each key for a few seconds;
#   9. print a summary and stop the emulators.
# Secrets are in files under target/demo/secrets (mode 0600), never on a command line.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEMO="$ROOT/target/demo"
HK="${HARDKEY:-$ROOT/target/release/hardkey}"
BENCH_SECONDS="${BENCH_SECONDS:-3}"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ hardkey %s\n' "$*" >&2; "$HK" "$@"; }

rm -rf "$DEMO"
mkdir -p "$DEMO/tpm" "$DEMO/tokens" "$DEMO/secrets" "$DEMO/out"
chmod 700 "$DEMO/secrets"
cd "$DEMO/out"

# --- emulators --------------------------------------------------------------------------------
free_port() {
    local p
    for p in $(seq 23210 2 23400); do
        if ! (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null &&
            ! (exec 3<>/dev/tcp/127.0.0.1/$((p + 1))) 2>/dev/null; then
            echo "$p"
            return
        fi
    done
    echo "no free port pair for swtpm" >&2
    exit 1
}
PORT=$(free_port)
swtpm socket --tpm2 --server type=tcp,port="$PORT" --ctrl type=tcp,port=$((PORT + 1)) \
    --tpmstate dir="$DEMO/tpm" --flags not-need-init,startup-clear \
    --pid file="$DEMO/swtpm.pid" --log file="$DEMO/swtpm.log" &
SWTPM=$!
SERVE=
cleanup() {
    if [ -n "$SERVE" ]; then kill "$SERVE" 2>/dev/null || true; fi
    kill "$SWTPM" 2>/dev/null || true
    wait "$SWTPM" 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 100); do
    (exec 3<>/dev/tcp/127.0.0.1/"$PORT") 2>/dev/null && break
    sleep 0.05
done
export HARDKEY_TCTI="swtpm:host=127.0.0.1,port=$PORT"
# The demo may restart swtpm uncleanly: relax dictionary-attack protection first.
tpm2_dictionarylockout --setup-parameters --max-tries=100 --recovery-time=1 \
    --lockout-recovery-time=1 --tcti="$HARDKEY_TCTI" >/dev/null

cat >"$DEMO/softhsm2.conf" <<CONF
directories.tokendir = $DEMO/tokens
objectstore.backend = file
log.level = ERROR
CONF
export SOFTHSM2_CONF="$DEMO/softhsm2.conf"

# Secrets, as an operator would keep them: files readable only by the service user.
umask 077
head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$DEMO/secrets/owner"
head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$DEMO/secrets/lockout"
head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$DEMO/secrets/so-pin"
head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$DEMO/secrets/user-pin"
head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$DEMO/secrets/seal-password"
umask 022
S="$DEMO/secrets"

step "The TPM (swtpm on port $PORT), before and after taking ownership"
run tpm status
run tpm take-ownership --owner-auth-file "$S/owner" --lockout-auth-file "$S/lockout"

step "A PKCS#11 token (SoftHSM2)"
run token list --slots
run token init --slot 0 --label demo --so-pin-file "$S/so-pin"
run token init-pin pkcs11:token=demo --so-pin-file "$S/so-pin" --new-pin-file "$S/user-pin"
export HARDKEY_PIN
HARDKEY_PIN=$(cat "$S/user-pin")

step "Provision a key in each device"
TPM_KEY="tpm2:handle=0x81000010"
P11_KEY="pkcs11:token=demo;object=web"
run keygen tpm2: --alg p256 --persist 0x81000010 --owner-auth-file "$S/owner"
run keygen "$P11_KEY" --alg rsa2048
run list pkcs11:token=demo
run list tpm2: --owner-auth-file "$S/owner"

step "Sign with each key; openssl verifies"
echo "hello from hardkey" >message.txt
run sign "$TPM_KEY" --in message.txt --out tpm.sig --owner-auth-file "$S/owner"
run pubkey "$TPM_KEY" --out tpm.pub.pem --owner-auth-file "$S/owner"
openssl dgst -sha256 -verify tpm.pub.pem -signature tpm.sig message.txt
run sign "$P11_KEY" --scheme rsa-pss-sha256 --in message.txt --out p11.sig
run pubkey "$P11_KEY" --out p11.pub.pem
openssl dgst -sha256 -sigopt rsa_padding_mode:pss -sigopt rsa_pss_saltlen:-1 \
    -verify p11.pub.pem -signature p11.sig message.txt

if "$HK" help selfsign >/dev/null 2>&1; then
    step "Certificates: a self-signed certificate and a CSR per key; openssl checks them"
    run selfsign "$TPM_KEY" --subject "CN=tpm.demo.example,O=hardkey demo" \
        --san dns:tpm.demo.example,ip:127.0.0.1 --days 30 --out tpm.crt \
        --owner-auth-file "$S/owner"
    openssl x509 -in tpm.crt -noout -subject -ext subjectAltName
    openssl verify -check_ss_sig -partial_chain -trusted tpm.crt tpm.crt
    run csr "$P11_KEY" --subject "CN=web.demo.example,O=hardkey demo" \
        --san dns:web.demo.example --out web.csr
    openssl req -in web.csr -noout -verify -subject
    run selfsign "$P11_KEY" --subject "CN=web.demo.example" --san dns:web.demo.example \
        --days 30 --out web.crt
    openssl verify -check_ss_sig -partial_chain -trusted web.crt web.crt
fi

if [ -f tpm.crt ]; then
    step "Serve HTTPS on the TPM key; curl and openssl s_client connect, checking the certificate"
    HTTPS_PORT=$(free_port)
    printf '$ hardkey serve --key %s --cert tpm.crt --listen 127.0.0.1:%s --stack boring ... &\n' \
        "$TPM_KEY" "$HTTPS_PORT" >&2
    "$HK" serve --key "$TPM_KEY" --cert tpm.crt --listen "127.0.0.1:$HTTPS_PORT" \
        --stack boring --owner-auth-file "$S/owner" >serve.out 2>serve.err &
    SERVE=$!
    for _ in $(seq 200); do
        (exec 3<>/dev/tcp/127.0.0.1/"$HTTPS_PORT") 2>/dev/null && break
        kill -0 "$SERVE" 2>/dev/null || { cat serve.err >&2; exit 1; }
        sleep 0.05
    done
    curl -sS --fail --tlsv1.3 --cacert tpm.crt \
        --resolve "tpm.demo.example:$HTTPS_PORT:127.0.0.1" "https://tpm.demo.example:$HTTPS_PORT/"
    echo | openssl s_client -connect "127.0.0.1:$HTTPS_PORT" -tls1_2 -CAfile tpm.crt \
        -verify_return_error -verify_ip 127.0.0.1 -brief 2>&1 |
        grep -E "^(Protocol version|Ciphersuite|(Peer )?[Ss]ignature type|Hash used|Verification):"
    kill -INT "$SERVE"
    wait "$SERVE"
    SERVE=
    cat serve.err serve.out
fi

step "Seal a secret to the TPM under a password and PCR 16; unseal it"
printf 'db-password-%s' "$(head -c 4 /dev/urandom | od -An -tx1 | tr -d ' \n')" >secret.txt
run seal --in secret.txt --out secret.sealed --pcrs sha256:16 --auth-file "$S/seal-password" \
    --owner-auth-file "$S/owner"
run unseal --in secret.sealed --out unsealed.txt --auth-file "$S/seal-password" \
    --owner-auth-file "$S/owner"
cmp secret.txt unsealed.txt && echo "unsealed secret matches"
tpm2_pcrextend "16:sha256=$(printf 'ab%.0s' $(seq 32))" --tcti="$HARDKEY_TCTI"
if "$HK" unseal --in secret.sealed --out - --auth-file "$S/seal-password" \
    --owner-auth-file "$S/owner" >/dev/null 2>unseal.err; then
    echo "error: unseal succeeded after the PCR changed" >&2
    exit 1
fi
echo "after tpm2_pcrextend 16: $(cat unseal.err)"

step "Bench each key for ${BENCH_SECONDS} s"
run --json bench "$TPM_KEY" --duration "${BENCH_SECONDS}s" --concurrency 4 \
    --owner-auth-file "$S/owner" >tpm.bench.json
run --json bench "$P11_KEY" --duration "${BENCH_SECONDS}s" --concurrency 2 >p11.bench.json

step "Summary"
python3 - tpm.bench.json p11.bench.json <<'PY'
import json, sys
print(f"{'device':<44} {'scheme':<18} {'sign/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
for path in sys.argv[1:]:
    r = json.load(open(path))
    print(f"{r['device']:<44} {r['scheme']:<18} {r['signatures_per_second']:>8.1f} "
          f"{r['latency_ms']['p50']:>8.2f} {r['latency_ms']['p99']:>8.2f}")
PY
echo
echo "Files are in $DEMO/out; the emulators stop now."
