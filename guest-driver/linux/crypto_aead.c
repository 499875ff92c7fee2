// SPDX-License-Identifier: GPL-2.0 OR MIT
/*
 * virtio_accel: gcm(aes) as an aead algorithm (spec §8.6, §8.7).
 *
 * req->src holds AAD || text (|| tag when decrypting), req->dst receives
 * AAD || text' (|| tag when encrypting); the AAD bytes of req->dst are not
 * written, as with the kernel's other gcm(aes). The device takes in[0] = the
 * AAD, in[1] = the text and out[0] = text'; the tag comes back in the
 * response (seal) or goes in the parameter block (open).
 *
 * The device does AES-256 with 16-byte tags: requests with a 128- or 192-bit
 * key or a shorter tag go to a software gcm(aes) (the fallback transform,
 * never this driver), as do requests the device cannot take or fails.
 * The spec forbids an output that overlaps an input (§8.10.1), so an
 * in-place request has the device write to a bounce buffer, copied to
 * req->dst on completion.
 */
#include <crypto/aes.h>
#include <crypto/gcm.h>
#include <crypto/internal/aead.h>
#include <crypto/scatterwalk.h>
#include <linux/crypto.h>
#include <linux/slab.h>
#include <linux/string.h>

#include "crypto.h"

static_assert(sizeof(struct virtio_accel_aes_gcm_params) ==
	      VIRTIO_ACCEL_PARAMS_SIZE);
static_assert(GCM_AES_IV_SIZE == VIRTIO_ACCEL_GCM_IV_SIZE);

struct vaccel_aead_ctx {
	struct vaccel_device *dev;	/* NULL: software only */
	struct crypto_aead *fallback;
	unsigned int keylen;
	u8 key[AES_MAX_KEY_SIZE];
};

struct vaccel_aead_reqctx {
	struct scatterlist src[2];	/* req->src after the AAD */
	struct scatterlist dst[2];	/* req->dst after the AAD */
	struct scatterlist bounce_sg;
	u8 *bounce;			/* out[0] of an in-place request */
	unsigned int textlen;		/* bytes of text in and out */
	bool encrypt;
	struct aead_request fallback_req;	/* last: its context follows */
};

/*
 * Hands @req to the fallback transform, which completes it through
 * @compl(@data).
 */
static int vaccel_aead_fallback(struct aead_request *req, u32 flags,
				crypto_completion_t compl, void *data)
{
	struct vaccel_aead_ctx *ctx = crypto_aead_ctx(crypto_aead_reqtfm(req));
	struct vaccel_aead_reqctx *rctx = aead_request_ctx(req);
	struct aead_request *sub = &rctx->fallback_req;

	aead_request_set_tfm(sub, ctx->fallback);
	aead_request_set_callback(sub, flags, compl, data);
	aead_request_set_crypt(sub, req->src, req->dst, req->cryptlen,
			       req->iv);
	aead_request_set_ad(sub, req->assoclen);
	return rctx->encrypt ? crypto_aead_encrypt(sub) :
			       crypto_aead_decrypt(sub);
}

static void vaccel_aead_fallback_done(void *data, int err)
{
	/* The caller already had -EINPROGRESS from this driver. */
	if (err == -EINPROGRESS)
		return;
	aead_request_complete(data, err);
}

/*
 * Redoes @req in software after the device failed it; the done callback
 * may not sleep.
 */
static void vaccel_aead_retry(struct aead_request *req)
{
	u32 flags = (req->base.flags & ~CRYPTO_TFM_REQ_MAY_SLEEP) |
		    CRYPTO_TFM_REQ_MAY_BACKLOG;
	int err;

	err = vaccel_aead_fallback(req, flags, vaccel_aead_fallback_done, req);
	if (err != -EINPROGRESS && err != -EBUSY)
		aead_request_complete(req, err);
}

/* Copies what the device returned into req->dst. */
static void vaccel_aead_deliver(struct aead_request *req,
				const struct vaccel_request *vreq)
{
	struct vaccel_aead_reqctx *rctx = aead_request_ctx(req);
	unsigned int text_end = req->assoclen + rctx->textlen;

	if (rctx->bounce)
		scatterwalk_map_and_copy(rctx->bounce, req->dst, req->assoclen,
					 rctx->textlen, 1);
	if (rctx->encrypt)
		scatterwalk_map_and_copy(vreq->resp->result, req->dst, text_end,
					 VIRTIO_ACCEL_GCM_TAG_SIZE, 1);
}

static void vaccel_aead_done(struct vaccel_request *vreq)
{
	struct aead_request *req = vreq->context;
	struct vaccel_aead_reqctx *rctx = aead_request_ctx(req);
	struct vaccel_aead_ctx *ctx = crypto_aead_ctx(crypto_aead_reqtfm(req));
	u32 status = vaccel_crypto_status(vreq);
	bool retry = false;
	int err = 0;

	/* Both operations write the whole text (§8.6, §8.7). */
	if (status == VIRTIO_ACCEL_S_OK &&
	    le64_to_cpu(vreq->resp->bytes_written) != rctx->textlen)
		status = VIRTIO_ACCEL_S_DEVICE_ERROR;
	if (status == VIRTIO_ACCEL_S_OK) {
		vaccel_aead_deliver(req, vreq);
	} else if (status == VIRTIO_ACCEL_S_AUTH_FAILED && !rctx->encrypt) {
		err = -EBADMSG;
	} else {
		vaccel_crypto_note_fallback(ctx->dev, vreq, status);
		retry = true;
	}
	kfree_sensitive(rctx->bounce);
	vaccel_crypto_request_free(vreq);
	if (retry)
		vaccel_aead_retry(req);
	else
		aead_request_complete(req, err);
}

/* Builds the device request for @req; -EINPROGRESS or why not. */
static int vaccel_aead_submit(struct aead_request *req)
{
	struct crypto_aead *tfm = crypto_aead_reqtfm(req);
	struct vaccel_aead_ctx *ctx = crypto_aead_ctx(tfm);
	struct vaccel_aead_reqctx *rctx = aead_request_ctx(req);
	struct virtio_accel_aes_gcm_params params = {};
	u32 op = rctx->encrypt ? VIRTIO_ACCEL_OP_AES_GCM_SEAL :
				 VIRTIO_ACCEL_OP_AES_GCM_OPEN;
	struct scatterlist *text = NULL, *out = NULL;
	struct vaccel_request *vreq;
	unsigned int textlen;
	int err;

	if (!ctx->dev || ctx->keylen != VIRTIO_ACCEL_AES_KEY_SIZE ||
	    crypto_aead_authsize(tfm) != VIRTIO_ACCEL_GCM_TAG_SIZE)
		return -EOPNOTSUPP;
	/* crypto_aead_decrypt() made sure that the tag is there. */
	textlen = req->cryptlen -
		  (rctx->encrypt ? 0 : VIRTIO_ACCEL_GCM_TAG_SIZE);
	rctx->textlen = textlen;
	rctx->bounce = NULL;
	if (textlen) {
		text = scatterwalk_ffwd(rctx->src, req->src, req->assoclen);
		out = scatterwalk_ffwd(rctx->dst, req->dst, req->assoclen);
	}
	if (vaccel_crypto_sg_overlap(req->src, req->assoclen + textlen, out,
				     textlen)) {
		rctx->bounce = kmalloc(textlen,
				       vaccel_crypto_gfp(req->base.flags));
		if (!rctx->bounce)
			return -ENOMEM;
		sg_init_one(&rctx->bounce_sg, rctx->bounce, textlen);
		out = &rctx->bounce_sg;
	}

	vreq = vaccel_crypto_request(op, req->base.flags, vaccel_aead_done,
				     req);
	if (!vreq) {
		err = -ENOMEM;
		goto free_bounce;
	}
	memcpy(params.key, ctx->key, sizeof(params.key));
	memcpy(params.iv, req->iv, sizeof(params.iv));
	if (!rctx->encrypt)
		scatterwalk_map_and_copy(params.tag, req->src,
					 req->assoclen + textlen,
					 sizeof(params.tag), 0);
	memcpy(vreq->params, &params, sizeof(params));
	memzero_explicit(&params, sizeof(params));
	vreq->num_in = 2;
	vreq->num_out = 1;
	vaccel_crypto_buf(&vreq->bufs[0], req->src, req->assoclen);
	vaccel_crypto_buf(&vreq->bufs[1], text, textlen);
	vaccel_crypto_buf(&vreq->bufs[2], out, textlen);
	err = vaccel_crypto_submit(ctx->dev, vreq, req->base.flags);
	if (err == -EINPROGRESS)
		return err;
free_bounce:
	kfree(rctx->bounce);
	return err;
}

static int vaccel_aead_crypt(struct aead_request *req, bool encrypt)
{
	struct vaccel_aead_reqctx *rctx = aead_request_ctx(req);
	int err;

	rctx->encrypt = encrypt;
	err = vaccel_aead_submit(req);
	if (err == -EINPROGRESS)
		return err;
	return vaccel_aead_fallback(req, req->base.flags, req->base.complete,
				    req->base.data);
}

static int vaccel_aead_encrypt(struct aead_request *req)
{
	return vaccel_aead_crypt(req, true);
}

static int vaccel_aead_decrypt(struct aead_request *req)
{
	return vaccel_aead_crypt(req, false);
}

static int vaccel_aead_setkey(struct crypto_aead *tfm, const u8 *key,
			      unsigned int keylen)
{
	struct vaccel_aead_ctx *ctx = crypto_aead_ctx(tfm);
	int err;

	err = aes_check_keylen(keylen);
	if (err)
		return err;
	crypto_aead_clear_flags(ctx->fallback, CRYPTO_TFM_REQ_MASK);
	crypto_aead_set_flags(ctx->fallback,
			      crypto_aead_get_flags(tfm) & CRYPTO_TFM_REQ_MASK);
	err = crypto_aead_setkey(ctx->fallback, key, keylen);
	if (err)
		return err;
	memcpy(ctx->key, key, keylen);
	ctx->keylen = keylen;
	return 0;
}

static int vaccel_aead_setauthsize(struct crypto_aead *tfm,
				   unsigned int authsize)
{
	struct vaccel_aead_ctx *ctx = crypto_aead_ctx(tfm);
	int err;

	err = crypto_gcm_check_authsize(authsize);
	if (err)
		return err;
	return crypto_aead_setauthsize(ctx->fallback, authsize);
}

static int vaccel_aead_init(struct crypto_aead *tfm)
{
	struct vaccel_aead_ctx *ctx = crypto_aead_ctx(tfm);
	struct crypto_aead *fallback;

	/* NEED_FALLBACK in the mask keeps this driver out. */
	fallback = crypto_alloc_aead("gcm(aes)", 0, CRYPTO_ALG_NEED_FALLBACK);
	if (IS_ERR(fallback))
		return PTR_ERR(fallback);
	ctx->fallback = fallback;
	ctx->keylen = 0;
	crypto_aead_set_reqsize(tfm, sizeof(struct vaccel_aead_reqctx) +
				     crypto_aead_reqsize(fallback));
	ctx->dev = vaccel_get_device(VIRTIO_ACCEL_OP_AES_GCM_SEAL);
	return 0;
}

static void vaccel_aead_exit(struct crypto_aead *tfm)
{
	struct vaccel_aead_ctx *ctx = crypto_aead_ctx(tfm);

	vaccel_put_device(ctx->dev);
	crypto_free_aead(ctx->fallback);
	memzero_explicit(ctx->key, sizeof(ctx->key));
}

static struct aead_alg vaccel_aead_alg = {
	.setkey = vaccel_aead_setkey,
	.setauthsize = vaccel_aead_setauthsize,
	.encrypt = vaccel_aead_encrypt,
	.decrypt = vaccel_aead_decrypt,
	.init = vaccel_aead_init,
	.exit = vaccel_aead_exit,
	.ivsize = GCM_AES_IV_SIZE,
	.maxauthsize = VIRTIO_ACCEL_GCM_TAG_SIZE,
	.base = {
		.cra_name = "gcm(aes)",
		.cra_driver_name = "gcm-aes-virtio-accel",
		.cra_flags = CRYPTO_ALG_ASYNC | CRYPTO_ALG_KERN_DRIVER_ONLY |
			     CRYPTO_ALG_ALLOCATES_MEMORY |
			     CRYPTO_ALG_NEED_FALLBACK,
		.cra_blocksize = 1,
		.cra_ctxsize = sizeof(struct vaccel_aead_ctx),
		.cra_module = THIS_MODULE,
	},
};

int vaccel_aead_register(int priority)
{
	vaccel_aead_alg.base.cra_priority = priority;
	return crypto_register_aead(&vaccel_aead_alg);
}

void vaccel_aead_unregister(void)
{
	crypto_unregister_aead(&vaccel_aead_alg);
}
