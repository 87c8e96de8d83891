/* A GM/T 0016-2012 application written against skfapi.h only: loads the SKF library given
 * on the command line with dlopen and drives a token's whole production path, PIN lockout
 * and error codes. Outside checks use OpenSSL's libcrypto (SM4 for device authentication,
 * SM2 to decrypt what the library encrypted); the Rust test verifies the printed signature
 * with the openssl command.
 *
 * usage: harness LIBRARY SERIAL CERT_IN CERT_OUT     (the production path)
 *        harness LIBRARY expect-genrandom SAR         (one call, for injected faults)
 * Prints key=value lines; exits 1 with a message on the first failed check. */
#include <dlfcn.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>

#include "skfapi.h"

_Static_assert(sizeof(DEVINFO) == 294, "DEVINFO is packed");
_Static_assert(offsetof(DEVINFO, AlgSymCap) == 198, "DEVINFO is packed");
_Static_assert(sizeof(ECCPUBLICKEYBLOB) == 132, "ECCPUBLICKEYBLOB");
_Static_assert(sizeof(ECCSIGNATUREBLOB) == 128, "ECCSIGNATUREBLOB");
_Static_assert(offsetof(ECCCIPHERBLOB, Cipher) == 164, "ECCCIPHERBLOB");
_Static_assert(offsetof(ENVELOPEDKEYBLOB, ECCCipherBlob) == 208, "ENVELOPEDKEYBLOB");

static void *lib;

static void *sym(const char *name) {
    void *f = dlsym(lib, name);
    if (!f) {
        fprintf(stderr, "FAIL: %s is not exported\n", name);
        exit(1);
    }
    return f;
}
#define FN(name) ((name##_t)sym(#name))

#define EXPECT(call, want)                                                                    \
    do {                                                                                      \
        ULONG rv_ = (call);                                                                   \
        if (rv_ != (ULONG)(want)) {                                                           \
            fprintf(stderr, "FAIL line %d: %s returned 0x%08X, expected 0x%08X\n", __LINE__,  \
                    #call, rv_, (ULONG)(want));                                               \
            exit(1);                                                                          \
        }                                                                                     \
    } while (0)
#define CHECK(cond)                                                                           \
    do {                                                                                      \
        if (!(cond)) {                                                                        \
            fprintf(stderr, "FAIL line %d: %s\n", __LINE__, #cond);                           \
            exit(1);                                                                          \
        }                                                                                     \
    } while (0)

static void print_hex(const char *key, const BYTE *p, size_t n) {
    printf("%s=", key);
    for (size_t i = 0; i < n; i++) printf("%02x", p[i]);
    printf("\n");
}

/* SM4-ECB without padding through libcrypto. */
static void sm4_ecb(const BYTE key[16], const BYTE *in, int len, BYTE *out) {
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    int n = 0, m = 0;
    CHECK(c && EVP_EncryptInit_ex(c, EVP_sm4_ecb(), NULL, key, NULL) == 1);
    EVP_CIPHER_CTX_set_padding(c, 0);
    CHECK(EVP_EncryptUpdate(c, out, &n, in, len) == 1);
    CHECK(EVP_EncryptFinal_ex(c, out + n, &m) == 1 && n + m == len);
    EVP_CIPHER_CTX_free(c);
}

/* SM4-ECB with PKCS#5 padding through libcrypto; returns the ciphertext's length. */
static int sm4_ecb_padded(const BYTE key[16], const BYTE *in, int len, BYTE *out) {
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    int n = 0, m = 0;
    CHECK(c && EVP_EncryptInit_ex(c, EVP_sm4_ecb(), NULL, key, NULL) == 1);
    CHECK(EVP_EncryptUpdate(c, out, &n, in, len) == 1);
    CHECK(EVP_EncryptFinal_ex(c, out + n, &m) == 1);
    EVP_CIPHER_CTX_free(c);
    return n + m;
}

static void dev_auth(DEVHANDLE dev, const BYTE key[16], ULONG want) {
    BYTE challenge[16] = {0}, auth[16];
    EXPECT(FN(SKF_GenRandom)(dev, challenge, 8), SAR_OK);
    sm4_ecb(key, challenge, 16, auth);
    EXPECT(FN(SKF_DevAuth)(dev, auth, 16), want);
}

/* DER length and INTEGER/OCTET STRING writers for OpenSSL's SM2 ciphertext
 * SEQUENCE { x INTEGER, y INTEGER, hash OCTET STRING, cipher OCTET STRING }. */
static size_t der_len(BYTE *p, size_t n) {
    if (n < 128) { p[0] = (BYTE)n; return 1; }
    p[0] = 0x81; p[1] = (BYTE)n; return 2;
}
static size_t der_int(BYTE *p, const BYTE *v, size_t n) {
    while (n > 1 && v[0] == 0) { v++; n--; }
    size_t pad = v[0] & 0x80 ? 1 : 0, o = 0;
    p[o++] = 0x02;
    o += der_len(p + o, n + pad);
    if (pad) p[o++] = 0;
    memcpy(p + o, v, n);
    return o + n;
}
static size_t der_octets(BYTE *p, const BYTE *v, size_t n) {
    size_t o = 0;
    p[o++] = 0x04;
    o += der_len(p + o, n);
    memcpy(p + o, v, n);
    return o + n;
}

static int production(const char *serial, const char *cert_in, const char *cert_out) {
    ULONG size = 0, retry = 0, state = 0, max = 0, left = 0, type = 0;
    BOOL dflt = 0;
    DEVHANDLE dev = NULL;
    HAPPLICATION app = NULL;
    HCONTAINER con = NULL;
    HANDLE hash = NULL;
    char names[256];

    /* Devices: one SKF device in the rack. */
    EXPECT(FN(SKF_EnumDev)(TRUE, NULL, &size), SAR_OK);
    CHECK(size > 2 && size <= sizeof names);
    ULONG small = 3;
    EXPECT(FN(SKF_EnumDev)(TRUE, names, &small), SAR_BUFFER_TOO_SMALL);
    CHECK(small == size);
    EXPECT(FN(SKF_EnumDev)(TRUE, names, &size), SAR_OK);
    CHECK(names[strlen(names) + 1] == 0); /* one name, then the list's final NUL */
    printf("device=%s\n", names);
    EXPECT(FN(SKF_GetDevState)(names, &state), SAR_OK);
    CHECK(state == DEV_PRESENT_STATE);
    EXPECT(FN(SKF_ConnectDev)("no such device", &dev), SAR_INVALIDPARAMERR);
    EXPECT(FN(SKF_ConnectDev)(names, &dev), SAR_OK);

    DEVINFO info;
    memset(&info, 0xAA, sizeof info);
    EXPECT(FN(SKF_GetDevInfo)(dev, &info), SAR_OK);
    CHECK(strcmp(info.SerialNumber, serial) == 0);
    CHECK(info.Version.major == 1 && info.DevAuthAlgId == SGD_SM4_ECB);
    CHECK(info.AlgAsymCap & SGD_SM2_1);
    CHECK(info.AlgHashCap & SGD_SM3);
    CHECK(info.TotalSpace > 0 && info.FreeSpace == info.TotalSpace);
    EXPECT(FN(SKF_SetLabel)(dev, "desk token"), SAR_OK);
    EXPECT(FN(SKF_GetDevInfo)(dev, &info), SAR_OK);
    CHECK(strcmp(info.Label, "desk token") == 0);

    /* Device authentication with the factory key, then a new device key. */
    static const BYTE factory[16] = "1234567812345678";
    static const BYTE desk_key[16] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};
    EXPECT(FN(SKF_CreateApplication)(dev, "UKEY-STATION", "12345678", 10, "123456", 6,
                                     SECURE_USER_ACCOUNT, &app),
           SAR_USER_NOT_LOGGED_IN);
    dev_auth(dev, desk_key, SAR_FAIL);
    BYTE auth[16] = {0};
    EXPECT(FN(SKF_DevAuth)(dev, auth, 16), SAR_FAIL); /* the challenge was used */
    dev_auth(dev, factory, SAR_OK);
    EXPECT(FN(SKF_ChangeDevAuthKey)(dev, (BYTE *)desk_key, 16), SAR_OK);
    EXPECT(FN(SKF_DisConnectDev)(dev), SAR_OK);
    EXPECT(FN(SKF_DisConnectDev)(dev), SAR_INVALIDHANDLEERR);
    EXPECT(FN(SKF_ConnectDev)(names, &dev), SAR_OK);
    dev_auth(dev, factory, SAR_FAIL);
    dev_auth(dev, desk_key, SAR_OK);

    /* The application with an admin and a user PIN. */
    EXPECT(FN(SKF_CreateApplication)(dev, "UKEY-STATION", "12345678", 10, "123", 6,
                                     SECURE_USER_ACCOUNT, &app),
           SAR_PIN_LEN_RANGE);
    EXPECT(FN(SKF_CreateApplication)(dev, "UKEY-STATION", "12345678", 10, "123456", 6,
                                     SECURE_USER_ACCOUNT, &app),
           SAR_OK);
    EXPECT(FN(SKF_CreateApplication)(dev, "UKEY-STATION", "12345678", 10, "123456", 6,
                                     SECURE_USER_ACCOUNT, &app),
           SAR_APPLICATION_EXISTS);
    EXPECT(FN(SKF_CloseApplication)(app), SAR_OK);
    size = sizeof names;
    EXPECT(FN(SKF_EnumApplication)(dev, names, &size), SAR_OK);
    CHECK(strcmp(names, "UKEY-STATION") == 0 && size == strlen("UKEY-STATION") + 2);
    EXPECT(FN(SKF_OpenApplication)(dev, "nope", &app), SAR_APPLICATION_NOT_EXISTS);
    EXPECT(FN(SKF_OpenApplication)(dev, "UKEY-STATION", &app), SAR_OK);
    EXPECT(FN(SKF_GetPINInfo)(app, USER_TYPE, &max, &left, &dflt), SAR_OK);
    CHECK(max == 6 && left == 6 && dflt == TRUE);
    EXPECT(FN(SKF_CreateContainer)(app, "seal-official", &con), SAR_USER_NOT_LOGGED_IN);
    EXPECT(FN(SKF_VerifyPIN)(app, USER_TYPE, "123456", &retry), SAR_OK);

    /* A container, an SM2 signing key pair generated on the token. */
    EXPECT(FN(SKF_CreateContainer)(app, "seal-official", &con), SAR_OK);
    EXPECT(FN(SKF_GetContainerType)(con, &type), SAR_OK);
    CHECK(type == 0);
    ECCPUBLICKEYBLOB pub;
    EXPECT(FN(SKF_GenECCKeyPair)(con, SGD_SM2_1, &pub), SAR_OK);
    CHECK(pub.BitLen == 256);
    for (int i = 0; i < 32; i++) CHECK(pub.XCoordinate[i] == 0 && pub.YCoordinate[i] == 0);
    EXPECT(FN(SKF_GetContainerType)(con, &type), SAR_OK);
    CHECK(type == 2);
    BYTE blob[200];
    ULONG blob_len = 0;
    EXPECT(FN(SKF_ExportPublicKey)(con, TRUE, NULL, &blob_len), SAR_OK);
    CHECK(blob_len == sizeof(ECCPUBLICKEYBLOB));
    EXPECT(FN(SKF_ExportPublicKey)(con, TRUE, blob, &blob_len), SAR_OK);
    CHECK(memcmp(blob, &pub, sizeof pub) == 0);
    blob_len = sizeof blob;
    EXPECT(FN(SKF_ExportPublicKey)(con, FALSE, blob, &blob_len), SAR_KEYNOTFOUNTERR);

    /* SM3 with Z of the public key and the default ID, signed on the token. */
    static BYTE msg[] = "CN=Example Supplier Co., Ltd. seal-official CSR";
    BYTE digest[32];
    ULONG digest_len = 0;
    EXPECT(FN(SKF_DigestInit)(dev, SGD_SM3, &pub, (unsigned char *)"1234567812345678", 16, &hash),
           SAR_OK);
    EXPECT(FN(SKF_Digest)(hash, msg, sizeof msg - 1, NULL, &digest_len), SAR_OK);
    CHECK(digest_len == 32);
    EXPECT(FN(SKF_Digest)(hash, msg, sizeof msg - 1, digest, &digest_len), SAR_OK);
    EXPECT(FN(SKF_CloseHandle)(hash), SAR_OK);
    ECCSIGNATUREBLOB sig;
    EXPECT(FN(SKF_ECCSignData)(con, digest, 31, &sig), SAR_INDATALENERR);
    EXPECT(FN(SKF_ECCSignData)(con, digest, 32, &sig), SAR_OK);
    EXPECT(FN(SKF_ECCVerify)(dev, &pub, digest, 32, &sig), SAR_OK);
    digest[0] ^= 1;
    EXPECT(FN(SKF_ECCVerify)(dev, &pub, digest, 32, &sig), SAR_FAIL);
    digest[0] ^= 1;
    print_hex("public_x", pub.XCoordinate + 32, 32);
    print_hex("public_y", pub.YCoordinate + 32, 32);
    print_hex("message", msg, sizeof msg - 1);
    print_hex("digest", digest, 32);
    print_hex("sig_r", sig.r + 32, 32);
    print_hex("sig_s", sig.s + 32, 32);

    /* The certificate in, and out byte for byte. */
    static BYTE cert[8192], back[8192];
    FILE *f = fopen(cert_in, "rb");
    CHECK(f != NULL);
    size_t cert_len = fread(cert, 1, sizeof cert, f);
    fclose(f);
    CHECK(cert_len > 0 && cert_len < sizeof cert);
    ULONG back_len = sizeof back;
    EXPECT(FN(SKF_ExportCertificate)(con, TRUE, back, &back_len), SAR_CERTNOTFOUNTERR);
    EXPECT(FN(SKF_ImportCertificate)(con, TRUE, cert, (ULONG)cert_len), SAR_OK);
    back_len = 10;
    EXPECT(FN(SKF_ExportCertificate)(con, TRUE, back, &back_len), SAR_BUFFER_TOO_SMALL);
    CHECK(back_len == cert_len);
    back_len = sizeof back;
    EXPECT(FN(SKF_ExportCertificate)(con, TRUE, back, &back_len), SAR_OK);
    CHECK(back_len == cert_len && memcmp(back, cert, cert_len) == 0);
    f = fopen(cert_out, "wb");
    CHECK(f != NULL && fwrite(back, 1, back_len, f) == back_len);
    fclose(f);

    /* An encryption key pair made outside (by OpenSSL), enveloped to the signing key. */
    EVP_PKEY *enc = EVP_PKEY_Q_keygen(NULL, NULL, "SM2");
    CHECK(enc != NULL);
    BIGNUM *d = NULL;
    BYTE d_bytes[32], point[65];
    size_t point_len = 0;
    CHECK(EVP_PKEY_get_bn_param(enc, OSSL_PKEY_PARAM_PRIV_KEY, &d) == 1);
    CHECK(BN_bn2binpad(d, d_bytes, 32) == 32);
    CHECK(EVP_PKEY_get_octet_string_param(enc, OSSL_PKEY_PARAM_PUB_KEY, point, sizeof point,
                                          &point_len) == 1 && point_len == 65);
    BYTE sym_key[16];
    EXPECT(FN(SKF_GenRandom)(dev, sym_key, 16), SAR_OK);
    PENVELOPEDKEYBLOB env = calloc(1, sizeof(ENVELOPEDKEYBLOB) + 16);
    CHECK(env != NULL);
    env->Version = 1;
    env->ulSymmAlgID = SGD_SM4_ECB;
    env->ulBits = 256;
    sm4_ecb(sym_key, d_bytes, 32, env->cbEncryptedPriKey + 32);
    env->PubKey.BitLen = 256;
    memcpy(env->PubKey.XCoordinate + 32, point + 1, 32);
    memcpy(env->PubKey.YCoordinate + 32, point + 33, 32);
    EXPECT(FN(SKF_ExtECCEncrypt)(dev, &pub, sym_key, 16, &env->ECCCipherBlob), SAR_OK);
    CHECK(env->ECCCipherBlob.CipherLen == 16);
    EXPECT(FN(SKF_ImportECCKeyPair)(con, env), SAR_OK);
    blob_len = sizeof blob;
    EXPECT(FN(SKF_ExportPublicKey)(con, FALSE, blob, &blob_len), SAR_OK);
    CHECK(memcmp(blob, &env->PubKey, sizeof(ECCPUBLICKEYBLOB)) == 0);

    /* The encryption key on the token decrypts: an SM4 key wrapped to it is unwrapped on
     * the token and encrypts as OpenSSL does with the same key. */
    BYTE session[16], sealed[64], expected[64], opened[64];
    EXPECT(FN(SKF_GenRandom)(dev, session, 16), SAR_OK);
    PECCCIPHERBLOB wrapped = calloc(1, sizeof(ECCCIPHERBLOB) + 16);
    CHECK(wrapped != NULL);
    EXPECT(FN(SKF_ExtECCEncrypt)(dev, &env->PubKey, session, 16, wrapped), SAR_OK);
    HANDLE key = NULL;
    EXPECT(FN(SKF_ImportSessionKey)(con, SGD_SM4_ECB, (BYTE *)wrapped, 164 + 16, &key), SAR_OK);
    BLOCKCIPHERPARAM param;
    memset(&param, 0, sizeof param);
    param.PaddingType = 1;
    static BYTE note[] = "sealed bid, lot 7";
    ULONG sealed_len = 0, opened_len = sizeof opened;
    EXPECT(FN(SKF_Encrypt)(key, note, sizeof note - 1, sealed, &sealed_len), 0x0A00000C);
    EXPECT(FN(SKF_EncryptInit)(key, param), SAR_OK);
    EXPECT(FN(SKF_Encrypt)(key, note, sizeof note - 1, NULL, &sealed_len), SAR_OK);
    CHECK(sealed_len == 32);
    EXPECT(FN(SKF_Encrypt)(key, note, sizeof note - 1, sealed, &sealed_len), SAR_OK);
    CHECK(sealed_len == (ULONG)sm4_ecb_padded(session, note, sizeof note - 1, expected));
    CHECK(memcmp(sealed, expected, sealed_len) == 0);
    EXPECT(FN(SKF_DecryptInit)(key, param), SAR_OK);
    EXPECT(FN(SKF_Decrypt)(key, sealed, sealed_len, opened, &opened_len), SAR_OK);
    CHECK(opened_len == sizeof note - 1 && memcmp(opened, note, opened_len) == 0);
    EXPECT(FN(SKF_CloseHandle)(key), SAR_OK);
    /* Wrapped to the signing key instead, the key does not come out. */
    EXPECT(FN(SKF_ExtECCEncrypt)(dev, &pub, session, 16, wrapped), SAR_OK);
    EXPECT(FN(SKF_ImportSessionKey)(con, SGD_SM4_ECB, (BYTE *)wrapped, 164 + 16, &key),
           0x0A000011);
    free(wrapped);

    /* What SKF_ExtECCEncrypt makes, OpenSSL decrypts (C1, C3, C2 in their places). */
    static BYTE secret[] = "bid document key";
    PECCCIPHERBLOB cb = calloc(1, sizeof(ECCCIPHERBLOB) + sizeof secret);
    CHECK(cb != NULL);
    EXPECT(FN(SKF_ExtECCEncrypt)(dev, &env->PubKey, secret, sizeof secret - 1, cb), SAR_OK);
    BYTE body[512], der[520], plain[64];
    size_t o = 0;
    o += der_int(body + o, cb->XCoordinate + 32, 32);
    o += der_int(body + o, cb->YCoordinate + 32, 32);
    o += der_octets(body + o, cb->HASH, 32);
    o += der_octets(body + o, cb->Cipher, cb->CipherLen);
    size_t n = 0;
    der[n++] = 0x30;
    n += der_len(der + n, o);
    memcpy(der + n, body, o);
    n += o;
    EVP_PKEY_CTX *pctx = EVP_PKEY_CTX_new(enc, NULL);
    size_t plain_len = sizeof plain;
    CHECK(pctx && EVP_PKEY_decrypt_init(pctx) == 1);
    CHECK(EVP_PKEY_decrypt(pctx, plain, &plain_len, der, n) == 1);
    CHECK(plain_len == sizeof secret - 1 && memcmp(plain, secret, plain_len) == 0);
    EVP_PKEY_CTX_free(pctx);
    EVP_PKEY_free(enc);
    BN_free(d);
    free(cb);
    free(env);

    /* PIN lockout: 6 tries, counted down; the 6th wrong one locks. */
    EXPECT(FN(SKF_ClearSecureState)(app), SAR_OK);
    EXPECT(FN(SKF_ECCSignData)(con, digest, 32, &sig), SAR_USER_NOT_LOGGED_IN);
    for (ULONG want = 5; want >= 1; want--) {
        retry = 99;
        EXPECT(FN(SKF_VerifyPIN)(app, USER_TYPE, "000000", &retry), SAR_PIN_INCORRECT);
        CHECK(retry == want);
    }
    EXPECT(FN(SKF_VerifyPIN)(app, USER_TYPE, "000000", &retry), SAR_PIN_LOCKED);
    CHECK(retry == 0);
    EXPECT(FN(SKF_VerifyPIN)(app, USER_TYPE, "123456", &retry), SAR_PIN_LOCKED);
    EXPECT(FN(SKF_GetPINInfo)(app, USER_TYPE, &max, &left, &dflt), SAR_OK);
    CHECK(max == 6 && left == 0);
    EXPECT(FN(SKF_ECCSignData)(con, digest, 32, &sig), SAR_USER_NOT_LOGGED_IN);
    /* The admin PIN unblocks it; a wrong admin PIN counts down too. */
    EXPECT(FN(SKF_UnblockPIN)(app, "87654321", "654321", &retry), SAR_PIN_INCORRECT);
    CHECK(retry == 9);
    EXPECT(FN(SKF_UnblockPIN)(app, "12345678", "654321", &retry), SAR_OK);
    EXPECT(FN(SKF_GetPINInfo)(app, ADMIN_TYPE, &max, &left, &dflt), SAR_OK);
    CHECK(max == 10 && left == 10);
    EXPECT(FN(SKF_GetPINInfo)(app, USER_TYPE, &max, &left, &dflt), SAR_OK);
    CHECK(left == 6 && dflt == FALSE);
    EXPECT(FN(SKF_VerifyPIN)(app, USER_TYPE, "654321", &retry), SAR_OK);
    EXPECT(FN(SKF_ChangePIN)(app, USER_TYPE, "654321", "24681357", &retry), SAR_OK);
    EXPECT(FN(SKF_VerifyPIN)(app, USER_TYPE, "24681357", &retry), SAR_OK);
    EXPECT(FN(SKF_ECCSignData)(con, digest, 32, &sig), SAR_OK);

    /* Malformed calls get codes, not crashes. */
    EXPECT(FN(SKF_VerifyPIN)(app, 7, "24681357", &retry), 0x0A00002A);
    EXPECT(FN(SKF_VerifyPIN)(app, USER_TYPE, NULL, &retry), SAR_INVALIDPARAMERR);
    EXPECT(FN(SKF_VerifyPIN)(NULL, USER_TYPE, "24681357", &retry), SAR_INVALIDHANDLEERR);
    EXPECT(FN(SKF_VerifyPIN)(con, USER_TYPE, "24681357", &retry), SAR_INVALIDHANDLEERR);
    EXPECT(FN(SKF_ECCSignData)(con, NULL, 32, &sig), SAR_INVALIDPARAMERR);
    EXPECT(FN(SKF_GenECCKeyPair)(con, SGD_SM2_1, NULL), SAR_INVALIDPARAMERR);
    EXPECT(FN(SKF_EnumDev)(TRUE, NULL, NULL), SAR_INVALIDPARAMERR);
    char long_name[100];
    memset(long_name, 'c', sizeof long_name - 1);
    long_name[sizeof long_name - 1] = 0;
    EXPECT(FN(SKF_CreateContainer)(app, long_name, &con), SAR_NAMELENERR);
    size = sizeof names;
    EXPECT(FN(SKF_EnumContainer)(app, names, &size), SAR_OK);
    CHECK(strcmp(names, "seal-official") == 0);

    EXPECT(FN(SKF_CloseContainer)(con), SAR_OK);
    EXPECT(FN(SKF_CloseApplication)(app), SAR_OK);
    EXPECT(FN(SKF_DisConnectDev)(dev), SAR_OK);
    printf("ok=production\n");
    return 0;
}

/* One SKF_GenRandom on the first device, expecting the code in argv (injected faults). */
static int expect_genrandom(const char *want) {
    char names[256];
    ULONG size = sizeof names;
    DEVHANDLE dev = NULL;
    BYTE r[8];
    EXPECT(FN(SKF_EnumDev)(TRUE, names, &size), SAR_OK);
    EXPECT(FN(SKF_ConnectDev)(names, &dev), SAR_OK);
    EXPECT(FN(SKF_GenRandom)(dev, r, 8), strtoul(want, NULL, 0));
    printf("ok=expect-genrandom\n");
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: harness LIBRARY SERIAL CERT_IN CERT_OUT\n");
        return 2;
    }
    lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        fprintf(stderr, "FAIL: dlopen: %s\n", dlerror());
        return 1;
    }
    if (strcmp(argv[2], "expect-genrandom") == 0 && argc == 4) return expect_genrandom(argv[3]);
    if (argc != 5) return 2;
    return production(argv[2], argv[3], argv[4]);
}
