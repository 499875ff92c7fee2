// SPDX-License-Identifier: GPL-2.0 OR MIT
/*
 * virtio_accel: crc32c and sha256 as ahash algorithms (spec §8.4, §8.5).
 *
 * crc32c follows crc32c-generic: the optional 4-byte key (le32, default
 * ~0) is the initial state, the state is the running CRC before its final
 * inversion, and the digest is le32 of the state inverted. The device's
 * CRC32C takes and returns finished CRCs (§8.4), so the seed it is given
 * is the state inverted, and the state after it is its result inverted.
 * update(), finup() and digest() run on the device.
 *
 * sha256: SHA256 (§8.5) has no intermediate state, so the device computes
 * digest() and a finup() that directly follows init() (or the import of an
 * initial state) in one go; update() streams through the kernel's software
 * SHA-256 (lib/crypto), whose state export() and import() carry, and a
 * finup() after an update() finishes in software too.
 */
#include <crypto/internal/hash.h>
#include <crypto/sha2.h>
#include <linux/crc32.h>
#include <linux/crypto.h>
#include <linux/string.h>
#include <linux/unaligned.h>

#include "crypto.h"

#define VACCEL_CRC32C_SIZE	4

static_assert(sizeof(struct virtio_accel_crc32c_params) ==
	      VIRTIO_ACCEL_PARAMS_SIZE);

struct vaccel_hash_ctx {
	struct vaccel_device *dev;	/* NULL: software only */
	u32 crc_key;			/* crc32c: the initial state */
};

struct vaccel_hash_reqctx {
	union {
		u32 crc;		/* crc32c: the running state */
		struct sha256_state sha;
	};
	bool finish;			/* crc32c: write the digest when done */
};

static struct vaccel_hash_ctx *vaccel_hash_ctx(struct ahash_request *req)
{
	return crypto_ahash_ctx(crypto_ahash_reqtfm(req));
}

/*
 * Submits req->src to the device's @op with the @params_len bytes of
 * parameter block at @params (the rest zero); -EINPROGRESS or why the
 * device cannot take it.
 */
static int vaccel_hash_submit(struct ahash_request *req, u32 op,
			      const void *params, size_t params_len,
			      vaccel_done_fn done)
{
	struct vaccel_hash_ctx *ctx = vaccel_hash_ctx(req);
	struct vaccel_request *vreq;

	/* Nothing to send: software is immediate. */
	if (!ctx->dev || !req->nbytes)
		return -EOPNOTSUPP;
	vreq = vaccel_crypto_request(op, req->base.flags, done, req);
	if (!vreq)
		return -ENOMEM;
	if (params_len)
		memcpy(vreq->params, params, params_len);
	vreq->num_in = 1;
	vaccel_crypto_buf(&vreq->bufs[0], req->src, req->nbytes);
	return vaccel_crypto_submit(ctx->dev, vreq, req->base.flags);
}

static int vaccel_hash_init_tfm(struct crypto_ahash *tfm, u32 op)
{
	struct vaccel_hash_ctx *ctx = crypto_ahash_ctx(tfm);

	ctx->dev = vaccel_get_device(op);
	ctx->crc_key = ~0;
	return 0;
}

static void vaccel_hash_exit_tfm(struct crypto_ahash *tfm)
{
	struct vaccel_hash_ctx *ctx = crypto_ahash_ctx(tfm);

	vaccel_put_device(ctx->dev);
}

/* ---- crc32c ---- */

static void vaccel_crc32c_update_sw(void *state, const u8 *data,
				    unsigned int len)
{
	u32 *crc = state;

	*crc = __crc32c_le(*crc, data, len);
}

/* The rest of the request in software. */
static void vaccel_crc32c_sw(struct ahash_request *req)
{
	struct vaccel_hash_reqctx *rctx = ahash_request_ctx(req);

	vaccel_crypto_sg_walk(req->src, req->nbytes, vaccel_crc32c_update_sw,
			      &rctx->crc);
	if (rctx->finish)
		put_unaligned_le32(~rctx->crc, req->result);
}

static void vaccel_crc32c_done(struct vaccel_request *vreq)
{
	struct ahash_request *req = vreq->context;
	struct vaccel_hash_reqctx *rctx = ahash_request_ctx(req);
	u32 status = vaccel_crypto_status(vreq);

	if (status == VIRTIO_ACCEL_S_OK) {
		rctx->crc = ~get_unaligned_le32(vreq->resp->result);
		if (rctx->finish)
			put_unaligned_le32(~rctx->crc, req->result);
	} else {
		vaccel_crypto_note_fallback(vaccel_hash_ctx(req)->dev, vreq,
					    status);
		vaccel_crc32c_sw(req);
	}
	vaccel_crypto_request_free(vreq);
	ahash_request_complete(req, 0);
}

/* Adds req->src to the state; with @finish, writes the digest. */
static int vaccel_crc32c_run(struct ahash_request *req, bool finish)
{
	struct vaccel_hash_reqctx *rctx = ahash_request_ctx(req);
	struct virtio_accel_crc32c_params params = {
		.seed = cpu_to_le32(~rctx->crc),
	};
	int err;

	rctx->finish = finish;
	err = vaccel_hash_submit(req, VIRTIO_ACCEL_OP_CRC32C, &params,
				 sizeof(params), vaccel_crc32c_done);
	if (err == -EINPROGRESS)
		return err;
	vaccel_crc32c_sw(req);
	return 0;
}

static int vaccel_crc32c_init(struct ahash_request *req)
{
	struct vaccel_hash_reqctx *rctx = ahash_request_ctx(req);

	rctx->crc = vaccel_hash_ctx(req)->crc_key;
	return 0;
}

static int vaccel_crc32c_update(struct ahash_request *req)
{
	return vaccel_crc32c_run(req, false);
}

static int vaccel_crc32c_final(struct ahash_request *req)
{
	struct vaccel_hash_reqctx *rctx = ahash_request_ctx(req);

	put_unaligned_le32(~rctx->crc, req->result);
	return 0;
}

static int vaccel_crc32c_finup(struct ahash_request *req)
{
	return vaccel_crc32c_run(req, true);
}

static int vaccel_crc32c_digest(struct ahash_request *req)
{
	vaccel_crc32c_init(req);
	return vaccel_crc32c_run(req, true);
}

static int vaccel_crc32c_export(struct ahash_request *req, void *out)
{
	struct vaccel_hash_reqctx *rctx = ahash_request_ctx(req);

	memcpy(out, &rctx->crc, sizeof(rctx->crc));
	return 0;
}

static int vaccel_crc32c_import(struct ahash_request *req, const void *in)
{
	struct vaccel_hash_reqctx *rctx = ahash_request_ctx(req);

	memcpy(&rctx->crc, in, sizeof(rctx->crc));
	return 0;
}

/* The key is the initial state, as for crc32c-generic. */
static int vaccel_crc32c_setkey(struct crypto_ahash *tfm, const u8 *key,
				unsigned int keylen)
{
	struct vaccel_hash_ctx *ctx = crypto_ahash_ctx(tfm);

	if (keylen != VACCEL_CRC32C_SIZE)
		return -EINVAL;
	ctx->crc_key = get_unaligned_le32(key);
	return 0;
}

static int vaccel_crc32c_init_tfm(struct crypto_ahash *tfm)
{
	return vaccel_hash_init_tfm(tfm, VIRTIO_ACCEL_OP_CRC32C);
}

/* ---- sha256 ---- */

static void vaccel_sha256_update_sw(void *state, const u8 *data,
				    unsigned int len)
{
	sha256_update(state, data, len);
}

/* Adds req->src to the software state; with @finish, writes the digest. */
static void vaccel_sha256_sw(struct ahash_request *req, bool finish)
{
	struct vaccel_hash_reqctx *rctx = ahash_request_ctx(req);

	vaccel_crypto_sg_walk(req->src, req->nbytes, vaccel_sha256_update_sw,
			      &rctx->sha);
	if (finish)
		sha256_final(&rctx->sha, req->result);
}

static void vaccel_sha256_done(struct vaccel_request *vreq)
{
	struct ahash_request *req = vreq->context;
	u32 status = vaccel_crypto_status(vreq);

	if (status == VIRTIO_ACCEL_S_OK) {
		memcpy(req->result, vreq->resp->result, SHA256_DIGEST_SIZE);
	} else {
		vaccel_crypto_note_fallback(vaccel_hash_ctx(req)->dev, vreq,
					    status);
		vaccel_sha256_sw(req, true);
	}
	vaccel_crypto_request_free(vreq);
	ahash_request_complete(req, 0);
}

static int vaccel_sha256_init(struct ahash_request *req)
{
	struct vaccel_hash_reqctx *rctx = ahash_request_ctx(req);

	sha256_init(&rctx->sha);
	return 0;
}

static int vaccel_sha256_update(struct ahash_request *req)
{
	vaccel_sha256_sw(req, false);
	return 0;
}

static int vaccel_sha256_final(struct ahash_request *req)
{
	struct vaccel_hash_reqctx *rctx = ahash_request_ctx(req);

	sha256_final(&rctx->sha, req->result);
	return 0;
}

static int vaccel_sha256_finup(struct ahash_request *req)
{
	struct vaccel_hash_reqctx *rctx = ahash_request_ctx(req);
	int err;

	/* The device hashes whole messages only (§8.5: no parameters). */
	if (!rctx->sha.count) {
		err = vaccel_hash_submit(req, VIRTIO_ACCEL_OP_SHA256, NULL, 0,
					 vaccel_sha256_done);
		if (err == -EINPROGRESS)
			return err;
	}
	vaccel_sha256_sw(req, true);
	return 0;
}

static int vaccel_sha256_digest(struct ahash_request *req)
{
	vaccel_sha256_init(req);
	return vaccel_sha256_finup(req);
}

static int vaccel_sha256_export(struct ahash_request *req, void *out)
{
	struct vaccel_hash_reqctx *rctx = ahash_request_ctx(req);

	memcpy(out, &rctx->sha, sizeof(rctx->sha));
	return 0;
}

static int vaccel_sha256_import(struct ahash_request *req, const void *in)
{
	struct vaccel_hash_reqctx *rctx = ahash_request_ctx(req);

	memcpy(&rctx->sha, in, sizeof(rctx->sha));
	return 0;
}

static int vaccel_sha256_init_tfm(struct crypto_ahash *tfm)
{
	return vaccel_hash_init_tfm(tfm, VIRTIO_ACCEL_OP_SHA256);
}

#define VACCEL_HASH_FLAGS	(CRYPTO_ALG_ASYNC | CRYPTO_ALG_KERN_DRIVER_ONLY | \
				 CRYPTO_ALG_ALLOCATES_MEMORY)

static struct ahash_alg vaccel_hash_algs[] = {
	{
		.init = vaccel_crc32c_init,
		.update = vaccel_crc32c_update,
		.final = vaccel_crc32c_final,
		.finup = vaccel_crc32c_finup,
		.digest = vaccel_crc32c_digest,
		.export = vaccel_crc32c_export,
		.import = vaccel_crc32c_import,
		.setkey = vaccel_crc32c_setkey,
		.init_tfm = vaccel_crc32c_init_tfm,
		.exit_tfm = vaccel_hash_exit_tfm,
		.reqsize = sizeof(struct vaccel_hash_reqctx),
		.halg = {
			.digestsize = VACCEL_CRC32C_SIZE,
			.statesize = sizeof(u32),
			.base = {
				.cra_name = "crc32c",
				.cra_driver_name = "crc32c-virtio-accel",
				.cra_flags = VACCEL_HASH_FLAGS |
					     CRYPTO_ALG_OPTIONAL_KEY,
				.cra_blocksize = 1,
				.cra_ctxsize = sizeof(struct vaccel_hash_ctx),
				.cra_module = THIS_MODULE,
			},
		},
	}, {
		.init = vaccel_sha256_init,
		.update = vaccel_sha256_update,
		.final = vaccel_sha256_final,
		.finup = vaccel_sha256_finup,
		.digest = vaccel_sha256_digest,
		.export = vaccel_sha256_export,
		.import = vaccel_sha256_import,
		.init_tfm = vaccel_sha256_init_tfm,
		.exit_tfm = vaccel_hash_exit_tfm,
		.reqsize = sizeof(struct vaccel_hash_reqctx),
		.halg = {
			.digestsize = SHA256_DIGEST_SIZE,
			.statesize = sizeof(struct sha256_state),
			.base = {
				.cra_name = "sha256",
				.cra_driver_name = "sha256-virtio-accel",
				.cra_flags = VACCEL_HASH_FLAGS,
				.cra_blocksize = SHA256_BLOCK_SIZE,
				.cra_ctxsize = sizeof(struct vaccel_hash_ctx),
				.cra_module = THIS_MODULE,
			},
		},
	},
};

int vaccel_hash_register(int priority)
{
	unsigned int i;

	for (i = 0; i < ARRAY_SIZE(vaccel_hash_algs); i++)
		vaccel_hash_algs[i].halg.base.cra_priority = priority;
	return crypto_register_ahashes(vaccel_hash_algs,
				       ARRAY_SIZE(vaccel_hash_algs));
}

void vaccel_hash_unregister(void)
{
	crypto_unregister_ahashes(vaccel_hash_algs,
				  ARRAY_SIZE(vaccel_hash_algs));
}
