// SPDX-License-Identifier: GPL-2.0 OR MIT
/*
 * afalg: known-answer checks of the kernel's gcm(aes) with a 256-bit key,
 * sha256 and crc32c through AF_ALG, for the guest of the VM test.
 *
 *   afalg             checks each algorithm by name: whichever driver the
 *                     kernel picks (the highest priority)
 *   afalg --driver    then the same checks by the driver names of the
 *                     virtio_accel module (sha256-virtio-accel,
 *                     crc32c-virtio-accel, gcm-aes-virtio-accel), which
 *                     fail if the module has not registered them
 *
 * It prints one line per check, "ok" or "FAIL", and exits with status 1 if
 * any check failed. The expected values come from other implementations:
 * Python's hashlib and cryptography, the spec's example (§8.6) and NIST's
 * GCM test case 16.
 *
 * Build (static, for the guest's initramfs):
 *   gcc -static -O2 -Wall -Wextra afalg.c -o afalg
 */
#include <errno.h>
#include <linux/if_alg.h>
#include <linux/types.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#ifndef AF_ALG
#define AF_ALG 38
#endif
#ifndef SOL_ALG
#define SOL_ALG 279
#endif

#define ARRAY_SIZE(a)	(sizeof(a) / sizeof((a)[0]))

#define PATTERN_LEN	10000
#define AAD_LEN		13
#define KEY_LEN		32
#define IV_LEN		12
#define TAG_LEN		16
#define BUF_LEN		(AAD_LEN + PATTERN_LEN + TAG_LEN)

/* Algorithm or driver names of the three algorithms. */
struct names {
	const char *sha256;
	const char *crc32c;
	const char *gcm;
};

/* A gcm(aes) known answer: AAD || plaintext gives ciphertext and tag. */
struct gcm_vector {
	const char *what;
	const char *key;	/* KEY_LEN bytes */
	const char *iv;		/* IV_LEN bytes */
	const char *aad;
	size_t aadlen;
	const char *pt;
	const char *ct;		/* ptlen bytes */
	size_t ptlen;
	const char *tag;	/* TAG_LEN bytes */
};

static int failures;
static __u8 pattern[PATTERN_LEN];

static void report(bool ok, const char *name, const char *what)
{
	printf("%s %s: %s\n", ok ? "ok  " : "FAIL", name, what);
	if (!ok)
		failures++;
}

/* CRC-32C bit by bit (spec §8.4), to fingerprint long outputs. */
static __u32 crc32c(const __u8 *data, size_t len)
{
	__u32 crc = 0xffffffff;
	size_t i;
	int bit;

	for (i = 0; i < len; i++) {
		crc ^= data[i];
		for (bit = 0; bit < 8; bit++)
			crc = crc & 1 ? (crc >> 1) ^ 0x82f63b78 : crc >> 1;
	}
	return ~crc;
}

/* An AF_ALG transform socket of @type/@name with @key (if any), or -1. */
static int alg_open(const char *type, const char *name, const void *key,
		    size_t keylen)
{
	struct sockaddr_alg sa = { .salg_family = AF_ALG };
	int fd;

	snprintf((char *)sa.salg_type, sizeof(sa.salg_type), "%s", type);
	snprintf((char *)sa.salg_name, sizeof(sa.salg_name), "%s", name);
	fd = socket(AF_ALG, SOCK_SEQPACKET, 0);
	if (fd < 0) {
		fprintf(stderr, "afalg: socket(AF_ALG): %s\n", strerror(errno));
		return -1;
	}
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa))) {
		fprintf(stderr, "afalg: bind %s %s: %s\n", type, name,
			strerror(errno));
		close(fd);
		return -1;
	}
	if (keylen && setsockopt(fd, SOL_ALG, ALG_SET_KEY, key, keylen)) {
		fprintf(stderr, "afalg: %s: setkey: %s\n", name,
			strerror(errno));
		close(fd);
		return -1;
	}
	return fd;
}

/*
 * Hashes @len bytes of @data with @name in @parts sends (MSG_MORE on all but
 * the last) into @digest; whether it worked.
 */
static bool hash(const char *name, const void *key, size_t keylen,
		 const void *data, size_t len, int parts, __u8 *digest,
		 size_t digestlen)
{
	size_t done = 0, part = len / parts;
	int tfm, op, i;
	bool ok = false;

	tfm = alg_open("hash", name, key, keylen);
	if (tfm < 0)
		return false;
	op = accept(tfm, NULL, 0);
	if (op < 0) {
		fprintf(stderr, "afalg: %s: accept: %s\n", name,
			strerror(errno));
		goto close_tfm;
	}
	for (i = 0; i < parts; i++) {
		size_t n = i == parts - 1 ? len - done : part;

		if (send(op, (const char *)data + done, n,
			 i == parts - 1 ? 0 : MSG_MORE) != (ssize_t)n) {
			fprintf(stderr, "afalg: %s: send: %s\n", name,
				strerror(errno));
			goto close_op;
		}
		done += n;
	}
	if (read(op, digest, digestlen) != (ssize_t)digestlen) {
		fprintf(stderr, "afalg: %s: read: %s\n", name, strerror(errno));
		goto close_op;
	}
	ok = true;
close_op:
	close(op);
close_tfm:
	close(tfm);
	return ok;
}

/* Checks that hashing gives the @digestlen-byte @digest. */
static void check_hash(const char *name, const char *what, const void *key,
		       size_t keylen, const void *data, size_t len, int parts,
		       const char *digest, size_t digestlen)
{
	__u8 got[32];

	report(hash(name, key, keylen, data, len, parts, got, digestlen) &&
	       !memcmp(got, digest, digestlen), name, what);
}

static void check_sha256(const char *name)
{
	static const char abc[] =
		"\xba\x78\x16\xbf\x8f\x01\xcf\xea\x41\x41\x40\xde\x5d\xae\x22\x23"
		"\xb0\x03\x61\xa3\x96\x17\x7a\x9c\xb4\x10\xff\x61\xf2\x00\x15\xad";
	static const char pat[] =
		"\x6e\x97\xd8\x60\x1c\xb1\x79\x06\xa4\x81\x9e\x0f\xcc\x8d\x03\x15"
		"\x0d\x3e\x43\x31\x35\x3e\xca\xa5\x16\xc0\x08\x4c\xad\xad\x54\xdd";

	check_hash(name, "\"abc\"", NULL, 0, "abc", 3, 1, abc, 32);
	check_hash(name, "10000-byte pattern, one send", NULL, 0, pattern,
		   PATTERN_LEN, 1, pat, 32);
	check_hash(name, "10000-byte pattern, three sends", NULL, 0, pattern,
		   PATTERN_LEN, 3, pat, 32);
}

static void check_crc32c(const char *name)
{
	/* The digest is the CRC, little-endian: 0xe3069283 (§8.4). */
	static const char digits[] = "\x83\x92\x06\xe3";
	static const char pat[] = "\x55\x26\xb7\x4e";
	/* The key is the initial state: the CRC of "12345" inverted. */
	static const char after_12345[] = "\xca\xdc\x2e\xe7";

	check_hash(name, "\"123456789\"", NULL, 0, "123456789", 9, 1, digits,
		   4);
	check_hash(name, "10000-byte pattern, one send", NULL, 0, pattern,
		   PATTERN_LEN, 1, pat, 4);
	check_hash(name, "10000-byte pattern, three sends", NULL, 0, pattern,
		   PATTERN_LEN, 3, pat, 4);
	check_hash(name, "\"6789\" keyed with the state after \"12345\"",
		   after_12345, 4, "6789", 4, 1, digits, 4);
}

static void set_cmsg(struct cmsghdr *cmsg, int type, const void *data,
		     size_t len)
{
	cmsg->cmsg_level = SOL_ALG;
	cmsg->cmsg_type = type;
	cmsg->cmsg_len = CMSG_LEN(len);
	memcpy(CMSG_DATA(cmsg), data, len);
}

/*
 * Runs one gcm(aes) operation with a TAG_LEN-byte tag on @in (@inlen
 * bytes: AAD || text, || tag to decrypt; the first @aadlen the AAD) into
 * @out, which gets AAD || text' (|| tag); the bytes read, or -errno.
 * @outlen must be exactly the output's length: algif_aead goes on reading
 * while the buffer has room, waiting for input that never comes.
 */
static ssize_t gcm(const char *name, const void *key, bool encrypt,
		   const void *iv, const void *in, size_t inlen, __u32 aadlen,
		   __u8 *out, size_t outlen)
{
	union {
		char buf[CMSG_SPACE(sizeof(__u32)) * 2 +
			 CMSG_SPACE(sizeof(struct af_alg_iv) + IV_LEN)];
		struct cmsghdr align;
	} control;
	__u8 ivmsg[sizeof(struct af_alg_iv) + IV_LEN];
	struct af_alg_iv ivhdr = { .ivlen = IV_LEN };
	__u32 opcode = encrypt ? ALG_OP_ENCRYPT : ALG_OP_DECRYPT;
	struct iovec iov = { .iov_base = (void *)in, .iov_len = inlen };
	struct msghdr msg = {
		.msg_iov = &iov,
		.msg_iovlen = 1,
		.msg_control = control.buf,
		.msg_controllen = sizeof(control.buf),
	};
	struct cmsghdr *cmsg;
	ssize_t got = -EIO;
	int tfm, op;

	tfm = alg_open("aead", name, key, KEY_LEN);
	if (tfm < 0)
		return -ENOENT;
	if (setsockopt(tfm, SOL_ALG, ALG_SET_AEAD_AUTHSIZE, NULL, TAG_LEN)) {
		fprintf(stderr, "afalg: %s: authsize: %s\n", name,
			strerror(errno));
		goto close_tfm;
	}
	op = accept(tfm, NULL, 0);
	if (op < 0) {
		fprintf(stderr, "afalg: %s: accept: %s\n", name,
			strerror(errno));
		goto close_tfm;
	}
	memset(&control, 0, sizeof(control));
	memcpy(ivmsg, &ivhdr, sizeof(ivhdr));
	memcpy(ivmsg + sizeof(ivhdr), iv, IV_LEN);
	cmsg = CMSG_FIRSTHDR(&msg);
	set_cmsg(cmsg, ALG_SET_OP, &opcode, sizeof(opcode));
	cmsg = CMSG_NXTHDR(&msg, cmsg);
	set_cmsg(cmsg, ALG_SET_IV, ivmsg, sizeof(ivmsg));
	cmsg = CMSG_NXTHDR(&msg, cmsg);
	set_cmsg(cmsg, ALG_SET_AEAD_ASSOCLEN, &aadlen, sizeof(aadlen));
	if (sendmsg(op, &msg, 0) != (ssize_t)inlen) {
		fprintf(stderr, "afalg: %s: sendmsg: %s\n", name,
			strerror(errno));
		goto close_op;
	}
	got = read(op, out, outlen);
	if (got < 0)
		got = -errno;
close_op:
	close(op);
close_tfm:
	close(tfm);
	return got;
}

/* Encrypts, decrypts, and decrypts with a corrupted tag @v. */
static void check_gcm_vector(const char *name, const struct gcm_vector *v)
{
	static __u8 in[BUF_LEN], out[BUF_LEN];
	size_t textlen = v->aadlen + v->ptlen;
	char what[128];
	ssize_t got;

	memcpy(in, v->aad, v->aadlen);
	memcpy(in + v->aadlen, v->pt, v->ptlen);
	got = gcm(name, v->key, true, v->iv, in, textlen, v->aadlen, out,
		  textlen + TAG_LEN);
	snprintf(what, sizeof(what), "%s: encrypt", v->what);
	report(got == (ssize_t)(textlen + TAG_LEN) &&
	       !memcmp(out + v->aadlen, v->ct, v->ptlen) &&
	       !memcmp(out + textlen, v->tag, TAG_LEN), name, what);

	memcpy(in + v->aadlen, v->ct, v->ptlen);
	memcpy(in + textlen, v->tag, TAG_LEN);
	got = gcm(name, v->key, false, v->iv, in, textlen + TAG_LEN,
		  v->aadlen, out, textlen);
	snprintf(what, sizeof(what), "%s: decrypt", v->what);
	report(got == (ssize_t)textlen &&
	       !memcmp(out + v->aadlen, v->pt, v->ptlen), name, what);

	in[textlen + TAG_LEN - 1] ^= 1;
	got = gcm(name, v->key, false, v->iv, in, textlen + TAG_LEN,
		  v->aadlen, out, textlen);
	snprintf(what, sizeof(what), "%s: decrypt with a bad tag fails (EBADMSG)",
		 v->what);
	report(got == -EBADMSG, name, what);
}

static const char tc16_key[] =
	"\xfe\xff\xe9\x92\x86\x65\x73\x1c\x6d\x6a\x8f\x94\x67\x30\x83\x08"
	"\xfe\xff\xe9\x92\x86\x65\x73\x1c\x6d\x6a\x8f\x94\x67\x30\x83\x08";
static const char tc16_iv[] =
	"\xca\xfe\xba\xbe\xfa\xce\xdb\xad\xde\xca\xf8\x88";

static const struct gcm_vector gcm_vectors[] = {
	{
		/* The spec's example (§8.6). */
		.what = "zero key and IV, 16 zero bytes",
		.key = "\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0",
		.iv = "\0\0\0\0\0\0\0\0\0\0\0\0",
		.aad = "",
		.aadlen = 0,
		.pt = "\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0",
		.ct = "\xce\xa7\x40\x3d\x4d\x60\x6b\x6e\x07\x4e\xc5\xd3\xba\xf3\x9d\x18",
		.ptlen = 16,
		.tag = "\xd0\xd1\xc8\xa7\x99\x99\x6b\xf0\x26\x5b\x98\xb5\xd4\x8a\xb9\x19",
	}, {
		.what = "NIST GCM test case 16",
		.key = tc16_key,
		.iv = tc16_iv,
		.aad = "\xfe\xed\xfa\xce\xde\xad\xbe\xef\xfe\xed\xfa\xce\xde\xad\xbe\xef"
		       "\xab\xad\xda\xd2",
		.aadlen = 20,
		.pt = "\xd9\x31\x32\x25\xf8\x84\x06\xe5\xa5\x59\x09\xc5\xaf\xf5\x26\x9a"
		      "\x86\xa7\xa9\x53\x15\x34\xf7\xda\x2e\x4c\x30\x3d\x8a\x31\x8a\x72"
		      "\x1c\x3c\x0c\x95\x95\x68\x09\x53\x2f\xcf\x0e\x24\x49\xa6\xb5\x25"
		      "\xb1\x6a\xed\xf5\xaa\x0d\xe6\x57\xba\x63\x7b\x39",
		.ct = "\x52\x2d\xc1\xf0\x99\x56\x7d\x07\xf4\x7f\x37\xa3\x2a\x84\x42\x7d"
		      "\x64\x3a\x8c\xdc\xbf\xe5\xc0\xc9\x75\x98\xa2\xbd\x25\x55\xd1\xaa"
		      "\x8c\xb0\x8e\x48\x59\x0d\xbb\x3d\xa7\xb0\x8b\x10\x56\x82\x88\x38"
		      "\xc5\xf6\x1e\x63\x93\xba\x7a\x0a\xbc\xc9\xf6\x62",
		.ptlen = 60,
		.tag = "\x76\xfc\x6e\xce\x0f\x4e\x17\x68\xcd\xdf\x88\x53\xbb\x2d\x55\x1b",
	},
};

/* gcm(aes) of the 10000-byte pattern with a 13-byte AAD, both ways. */
static void check_gcm_long(const char *name)
{
	static __u8 in[BUF_LEN], out[BUF_LEN];
	const size_t ctlen = PATTERN_LEN + TAG_LEN;
	size_t i;
	ssize_t got;

	for (i = 0; i < AAD_LEN; i++)
		in[i] = i;
	memcpy(in + AAD_LEN, pattern, PATTERN_LEN);
	got = gcm(name, tc16_key, true, tc16_iv, in, AAD_LEN + PATTERN_LEN,
		  AAD_LEN, out, AAD_LEN + ctlen);
	/* CRC-32C of ciphertext || tag, from Python's cryptography. */
	report(got == (ssize_t)(AAD_LEN + ctlen) &&
	       crc32c(out + AAD_LEN, ctlen) == 0x0686a1ac, name,
	       "10000-byte pattern, 13-byte AAD: encrypt");
	if (got != (ssize_t)(AAD_LEN + ctlen))
		return;
	memcpy(in + AAD_LEN, out + AAD_LEN, ctlen);
	got = gcm(name, tc16_key, false, tc16_iv, in, AAD_LEN + ctlen,
		  AAD_LEN, out, AAD_LEN + PATTERN_LEN);
	report(got == AAD_LEN + PATTERN_LEN &&
	       !memcmp(out + AAD_LEN, pattern, PATTERN_LEN), name,
	       "10000-byte pattern, 13-byte AAD: decrypt");
}

static void check_all(const struct names *names)
{
	size_t i;

	check_sha256(names->sha256);
	check_crc32c(names->crc32c);
	for (i = 0; i < ARRAY_SIZE(gcm_vectors); i++)
		check_gcm_vector(names->gcm, &gcm_vectors[i]);
	check_gcm_long(names->gcm);
}

int main(int argc, char **argv)
{
	static const struct names by_alg = {
		.sha256 = "sha256",
		.crc32c = "crc32c",
		.gcm = "gcm(aes)",
	};
	static const struct names by_driver = {
		.sha256 = "sha256-virtio-accel",
		.crc32c = "crc32c-virtio-accel",
		.gcm = "gcm-aes-virtio-accel",
	};
	bool drivers = false;
	size_t i;

	if (argc == 2 && !strcmp(argv[1], "--driver")) {
		drivers = true;
	} else if (argc != 1) {
		fprintf(stderr, "usage: %s [--driver]\n", argv[0]);
		return 2;
	}
	for (i = 0; i < PATTERN_LEN; i++)
		pattern[i] = i * 7 + 3;

	check_all(&by_alg);
	if (drivers)
		check_all(&by_driver);
	printf("afalg: %d check(s) failed\n", failures);
	return failures ? 1 : 0;
}
