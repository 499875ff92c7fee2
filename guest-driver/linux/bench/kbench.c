// SPDX-License-Identifier: GPL-2.0 OR MIT
/*
 * kbench: throughput of crypto API drivers, called from the kernel as a
 * kernel user (dm-crypt, zswap, IPsec) calls them: one driver by its driver
 * name, DEPTH requests submitted, then all waited for, for MSECS per point.
 *
 *   insmod kbench.ko "tests=hash:sha256-virtio-accel;aead:gcm(aes);..." \
 *          sizes=4096,65536,1048576 depths=1,8 msecs=500
 *
 * Kinds: hash (ahash digest; shash drivers through the ahash interface),
 * aead (encryption, 32-byte key, 16-byte tag, no AAD), comp and decomp
 * (acomp; decomp inflates what the same driver deflated). Each line gives
 * the driver the name resolved to, ops/s, MB/s of input, and a fingerprint
 * of the first request's output (crc32 of the digest or ciphertext, the
 * compressed length, or "ok" when inflation gave back the input).
 * The run happens while the module loads; unload it (rmmod kbench) to run
 * again with other parameters. (It does not fail the load as tcrypt does:
 * busybox's insmod retries a failed finit_module() with init_module(), which
 * would run everything twice.)
 */
#include <crypto/acompress.h>
#include <crypto/aead.h>
#include <crypto/hash.h>
#include <linux/crc32.h>
#include <linux/ktime.h>
#include <linux/module.h>
#include <linux/scatterlist.h>
#include <linux/sched.h>
#include <linux/slab.h>
#include <linux/string.h>

#define KB_MAX_DEPTH	16
#define KB_TAG		16
#define KB_KEY		32
#define KB_IV		12

static char *tests = "";
module_param(tests, charp, 0444);
static int sizes[8] = { 4096, 65536, 1048576 };
static int nsizes = 3;
module_param_array(sizes, int, &nsizes, 0444);
static int depths[4] = { 1, 8 };
static int ndepths = 2;
module_param_array(depths, int, &ndepths, 0444);
static int msecs = 500;
module_param(msecs, int, 0444);

enum kb_kind { KB_HASH, KB_AEAD, KB_COMP, KB_DECOMP };

struct kb_point {
	enum kb_kind kind;
	const char *name;
	size_t size;
	int depth;
	const u8 *src;		/* size bytes (the compressed input for decomp) */
	size_t slen;
	size_t dlen;
	struct scatterlist src_sg;
	union {
		struct crypto_ahash *hash;
		struct crypto_aead *aead;
		struct crypto_acomp *comp;
	} tfm;
	void *req[KB_MAX_DEPTH];
	u8 *dst[KB_MAX_DEPTH];
	struct scatterlist dst_sg[KB_MAX_DEPTH];
	u8 iv[KB_MAX_DEPTH][KB_IV];
	struct crypto_wait wait[KB_MAX_DEPTH];
	int ret[KB_MAX_DEPTH];
	const char *driver;
};

static u8 *text;	/* log-like bytes, the largest size */

static void kb_fill_text(u8 *buf, size_t len)
{
	static const char *const words[] = {
		"the", "device", "queue", "fence", "object", "request",
		"guest", "memory", "virtio", "accelerator", "completion",
		"descriptor", "host", "tenant", "status", "ok", "error",
		"0x1f", "2026-11-25", "INFO", "WARN", "vhost-user", "ring",
		"used", "avail", "index", "=", ":",
	};
	u32 x = 0x5eed;
	size_t at = 0;

	while (at < len) {
		const char *w;
		size_t n;

		x = x * 1664525 + 1013904223;
		w = words[(x >> 16) % ARRAY_SIZE(words)];
		n = min(strlen(w), len - at);
		memcpy(buf + at, w, n);
		at += n;
		if (at < len)
			buf[at++] = (x >> 8) % 11 ? ' ' : '\n';
	}
}

static int kb_alloc_tfm(struct kb_point *p)
{
	static const u8 key[KB_KEY] = { 1, 2, 3, 4, 5, 6, 7, 8 };
	int err;

	switch (p->kind) {
	case KB_HASH:
		p->tfm.hash = crypto_alloc_ahash(p->name, 0, 0);
		if (IS_ERR(p->tfm.hash))
			return PTR_ERR(p->tfm.hash);
		p->driver = crypto_ahash_driver_name(p->tfm.hash);
		return 0;
	case KB_AEAD:
		p->tfm.aead = crypto_alloc_aead(p->name, 0, 0);
		if (IS_ERR(p->tfm.aead))
			return PTR_ERR(p->tfm.aead);
		p->driver = crypto_aead_driver_name(p->tfm.aead);
		err = crypto_aead_setkey(p->tfm.aead, key, KB_KEY);
		return err ?: crypto_aead_setauthsize(p->tfm.aead, KB_TAG);
	default:
		p->tfm.comp = crypto_alloc_acomp(p->name, 0, 0);
		if (IS_ERR(p->tfm.comp))
			return PTR_ERR(p->tfm.comp);
		p->driver = crypto_tfm_alg_driver_name(crypto_acomp_tfm(p->tfm.comp));
		return 0;
	}
}

static void kb_free_tfm(struct kb_point *p)
{
	if (IS_ERR_OR_NULL(p->tfm.hash))
		return;
	if (p->kind == KB_HASH)
		crypto_free_ahash(p->tfm.hash);
	else if (p->kind == KB_AEAD)
		crypto_free_aead(p->tfm.aead);
	else
		crypto_free_acomp(p->tfm.comp);
}

static void *kb_alloc_req(struct kb_point *p, int i)
{
	struct crypto_wait *wait = &p->wait[i];
	u32 flags = CRYPTO_TFM_REQ_MAY_BACKLOG;

	crypto_init_wait(wait);
	sg_init_one(&p->dst_sg[i], p->dst[i], p->dlen);
	switch (p->kind) {
	case KB_HASH: {
		struct ahash_request *r = ahash_request_alloc(p->tfm.hash, GFP_KERNEL);

		if (r) {
			ahash_request_set_callback(r, flags, crypto_req_done, wait);
			ahash_request_set_crypt(r, &p->src_sg, p->dst[i], p->slen);
		}
		return r;
	}
	case KB_AEAD: {
		struct aead_request *r = aead_request_alloc(p->tfm.aead, GFP_KERNEL);

		if (r) {
			aead_request_set_callback(r, flags, crypto_req_done, wait);
			aead_request_set_crypt(r, &p->src_sg, &p->dst_sg[i], p->slen,
					       p->iv[i]);
			aead_request_set_ad(r, 0);
		}
		return r;
	}
	default: {
		struct acomp_req *r = acomp_request_alloc(p->tfm.comp);

		if (r) {
			acomp_request_set_callback(r, flags, crypto_req_done, wait);
			acomp_request_set_params(r, &p->src_sg, &p->dst_sg[i],
						 p->slen, p->dlen);
		}
		return r;
	}
	}
}

static void kb_free_req(struct kb_point *p, int i)
{
	if (!p->req[i])
		return;
	if (p->kind == KB_HASH)
		ahash_request_free(p->req[i]);
	else if (p->kind == KB_AEAD)
		aead_request_free(p->req[i]);
	else
		acomp_request_free(p->req[i]);
}

static int kb_submit(struct kb_point *p, int i)
{
	switch (p->kind) {
	case KB_HASH:
		return crypto_ahash_digest(p->req[i]);
	case KB_AEAD:
		return crypto_aead_encrypt(p->req[i]);
	case KB_COMP:
		((struct acomp_req *)p->req[i])->dlen = p->dlen;
		return crypto_acomp_compress(p->req[i]);
	default:
		((struct acomp_req *)p->req[i])->dlen = p->dlen;
		return crypto_acomp_decompress(p->req[i]);
	}
}

/* One round: depth requests submitted, then each waited for. */
static int kb_round(struct kb_point *p)
{
	int i, err = 0;

	for (i = 0; i < p->depth; i++)
		p->ret[i] = kb_submit(p, i);
	for (i = 0; i < p->depth; i++) {
		int r = crypto_wait_req(p->ret[i], &p->wait[i]);

		if (r && !err)
			err = r;
	}
	return err;
}

/* For decomp: the input, deflated by the driver under test. */
static int kb_make_compressed(struct kb_point *p, u8 **out)
{
	struct kb_point c = *p;
	int err;

	c.kind = KB_COMP;
	c.depth = 1;
	c.dlen = p->size + p->size / 8 + 1024;
	c.dst[0] = kmalloc(c.dlen, GFP_KERNEL);
	if (!c.dst[0])
		return -ENOMEM;
	c.req[0] = kb_alloc_req(&c, 0);
	if (!c.req[0]) {
		kfree(c.dst[0]);
		return -ENOMEM;
	}
	err = kb_round(&c);
	if (!err) {
		p->slen = ((struct acomp_req *)c.req[0])->dlen;
		*out = c.dst[0];
	} else {
		kfree(c.dst[0]);
	}
	kb_free_req(&c, 0);
	return err;
}

static void kb_report(struct kb_point *p, u64 ops, u64 ns, int err)
{
	char check[32] = "";
	u64 us = max_t(u64, ns / 1000, 1);

	if (err) {
		pr_info("kbench: %-44s %8zu d%-2d error %d\n",
			p->driver, p->size, p->depth, err);
		return;
	}
	if (p->kind == KB_COMP)
		snprintf(check, sizeof(check), "len %u",
			 ((struct acomp_req *)p->req[0])->dlen);
	else if (p->kind == KB_DECOMP)
		snprintf(check, sizeof(check), "%s",
			 ((struct acomp_req *)p->req[0])->dlen == p->size &&
			 !memcmp(p->dst[0], text, p->size) ? "ok" : "BAD");
	else
		snprintf(check, sizeof(check), "crc %08x",
			 crc32_le(0, p->dst[0], p->kind == KB_HASH ?
				  crypto_ahash_digestsize(p->tfm.hash) :
				  p->size + KB_TAG));
	pr_info("kbench: %-44s %8zu d%-2d %8llu op/s %9llu MB/s  %s\n",
		p->driver, p->size, p->depth, div64_u64(ops * 1000000, us),
		div64_u64(ops * p->size, us), check);
}

static void kb_point(enum kb_kind kind, const char *name, size_t size, int depth)
{
	struct kb_point *p;
	u8 *packed = NULL;
	u64 ops = 0, start, now;
	int i, err;

	p = kzalloc(sizeof(*p), GFP_KERNEL);
	if (!p)
		return;
	p->kind = kind;
	p->name = name;
	p->driver = name;
	p->size = size;
	p->depth = depth;
	p->src = text;
	p->slen = size;
	p->dlen = kind == KB_HASH ? 64 : kind == KB_AEAD ? size + KB_TAG :
		  kind == KB_COMP ? size + size / 8 + 1024 : size;
	err = kb_alloc_tfm(p);
	if (err)
		goto out;
	if (kind == KB_DECOMP) {
		sg_init_one(&p->src_sg, text, size);
		err = kb_make_compressed(p, &packed);
		if (err)
			goto out;
		p->src = packed;
	}
	sg_init_one(&p->src_sg, p->src, p->slen);
	for (i = 0; i < depth; i++) {
		p->dst[i] = kmalloc(p->dlen, GFP_KERNEL);
		p->iv[i][0] = i;
		p->req[i] = p->dst[i] ? kb_alloc_req(p, i) : NULL;
		if (!p->req[i]) {
			err = -ENOMEM;
			goto out;
		}
	}
	err = kb_round(p);	/* warm-up, not counted */
	start = ktime_get_ns();
	now = start;
	while (!err && now - start < (u64)msecs * NSEC_PER_MSEC) {
		err = kb_round(p);
		ops += depth;
		now = ktime_get_ns();
		cond_resched();
	}
out:
	kb_report(p, ops, now - start, err);
	for (i = 0; i < depth; i++) {
		kb_free_req(p, i);
		kfree(p->dst[i]);
	}
	kfree(packed);
	kb_free_tfm(p);
	kfree(p);
}

static int kb_parse(const char *test, enum kb_kind *kind, const char **name)
{
	static const char *const kinds[] = { "hash:", "aead:", "comp:", "decomp:" };
	int k;

	for (k = 0; k < ARRAY_SIZE(kinds); k++) {
		if (!strncmp(test, kinds[k], strlen(kinds[k]))) {
			*kind = k;
			*name = test + strlen(kinds[k]);
			return 0;
		}
	}
	return -EINVAL;
}

static int __init kb_init(void)
{
	char *list, *rest, *test;
	size_t max = 0;
	int s, d;

	for (s = 0; s < nsizes; s++)
		max = max_t(size_t, max, sizes[s]);
	text = kmalloc(max, GFP_KERNEL);
	if (!text)
		return -ENOMEM;
	kb_fill_text(text, max);
	list = kstrdup(tests, GFP_KERNEL);
	rest = list;
	while ((test = strsep(&rest, ";"))) {
		enum kb_kind kind;
		const char *name;

		if (kb_parse(test, &kind, &name)) {
			pr_info("kbench: bad test %s\n", test);
			continue;
		}
		for (s = 0; s < nsizes; s++)
			for (d = 0; d < ndepths; d++)
				kb_point(kind, name, sizes[s],
					 clamp(depths[d], 1, KB_MAX_DEPTH));
	}
	kfree(list);
	kfree(text);
	pr_info("kbench: done\n");
	return 0;
}
module_init(kb_init);

static void __exit kb_exit(void)
{
}
module_exit(kb_exit);

MODULE_DESCRIPTION("Crypto API driver throughput from the kernel");
MODULE_LICENSE("Dual MIT/GPL");
