#!/bin/sh
# Regenerates the test keys and the openssl-signed tokens beside this script.
# The tokens are signed by openssl, not by the crates wsloop verifies with, so the
# tests check interoperability with an independent implementation.
# Usage: sh make-fixtures.sh [--new-keys]
set -eu
cd "$(dirname "$0")"
if [ "${1:-}" = --new-keys ]; then
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out rs256-private.pem
    openssl pkey -in rs256-private.pem -pubout -out rs256-public.pem
    openssl rsa -pubin -in rs256-public.pem -RSAPublicKey_out -out rs256-public-pkcs1.pem
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out es256-private.pem
    openssl pkey -in es256-private.pem -pubout -out es256-public.pem
    # Keys the verifier must refuse: RSA under 2048 bits, and a curve other than P-256.
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:1024 | openssl pkey -pubout -out rsa1024-public.pem
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-384 | openssl pkey -pubout -out p384-public.pem
fi

b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
claims='{"sub":"alice","iss":"https://issuer.example","aud":"wsloop","iat":1700000000,"nbf":1700000000,"exp":2000000000}'
payload=$(printf '%s' "$claims" | b64url)

header=$(printf '%s' '{"alg":"RS256","typ":"JWT"}' | b64url)
sig=$(printf '%s' "$header.$payload" | openssl dgst -sha256 -sign rs256-private.pem | b64url)
printf '%s\n' "$header.$payload.$sig" > rs256-openssl.jwt

# openssl writes ECDSA signatures as DER; JWS (RFC 7518 3.4) wants r || s, 32 bytes each.
header=$(printf '%s' '{"alg":"ES256","typ":"JWT"}' | b64url)
printf '%s' "$header.$payload" | openssl dgst -sha256 -sign es256-private.pem > es256.der
rs=$(openssl asn1parse -inform DER -in es256.der | awk -F: '/INTEGER/ { printf "%064s", $NF }' | tr ' ' 0)
rm es256.der
sig=$(printf '%s' "$rs" | xxd -r -p | b64url)
printf '%s\n' "$header.$payload.$sig" > es256-openssl.jwt
# jwks.json: the public halves of rs256-public.pem and es256-public.pem and the unit tests' HS256 secret, as a JWKS (written with openssl and python3 once).
