// SPDX-License-Identifier: GPL-2.0 OR MIT
/*
 * virtio_accel: deflate as an acomp algorithm (spec §8.8, §8.9).
 *
 * The kernel's "deflate" is raw deflate (RFC 1951, no zlib header), at
 * zlib's default level. The device compresses with a window of its own
 * choosing (up to 32 KiB), so decompression here, on the device or in
 * software, accepts any window; the kernel's deflate-generic, which inflates
 * with a 2 KiB window, cannot decode every stream the device produces.
 *
 * Software: with no device, when the device cannot take a request, and when
 * it fails one. zswap BUG()s on a failed decompression, so a decompression
 * the device fails for any reason, including BadData and NoSpace, is redone
 * in software and only the software's verdict is the caller's. The software
 * path runs zlib on streams set up when the transform is created (nothing
 * to allocate under memory pressure), in process context on
 * vaccel_crypto_wq.
 */
#include <crypto/internal/acompress.h>
#include <linux/bottom_half.h>
#include <linux/crypto.h>
#include <linux/mm.h>
#include <linux/mutex.h>
#include <linux/scatterlist.h>
#include <linux/slab.h>
#include <linux/zlib.h>

#include "crypto.h"

/* zlib's default level (Z_DEFAULT_COMPRESSION), as crypto/deflate.c uses. */
#define VACCEL_DEFLATE_LEVEL	6
/* Software compression produces what deflate-generic does. */
#define VACCEL_SW_DEFLATE_WBITS	11

static_assert(sizeof(struct virtio_accel_deflate_params) ==
	      VIRTIO_ACCEL_PARAMS_SIZE);

struct vaccel_acomp_ctx {
	struct vaccel_device *dev;	/* NULL: software only */
	struct mutex sw_lock;		/* the two streams */
	struct z_stream_s deflate;
	struct z_stream_s inflate;
};

struct vaccel_acomp_reqctx {
	struct acomp_req *req;
	struct work_struct sw_work;
	bool compress;
	bool own_dst;			/* req->dst allocated here */
};

static struct vaccel_acomp_ctx *vaccel_acomp_ctx(struct acomp_req *req)
{
	return acomp_tfm_ctx(crypto_acomp_reqtfm(req));
}

static void vaccel_acomp_complete(struct acomp_req *req, int err)
{
	struct vaccel_acomp_reqctx *rctx = acomp_request_ctx(req);

	if (err && rctx->own_dst) {
		sgl_free(req->dst);
		req->dst = NULL;
	}
	acomp_request_complete(req, err);
}

/*
 * Maps the next chunk of the first @left bytes of @miter's list at @next;
 * its length, 0 at the end of the list.
 */
static unsigned int vaccel_zlib_map(struct sg_mapping_iter *miter,
				    unsigned int *left, u8 **next)
{
	unsigned int n;

	if (!sg_miter_next(miter))
		return 0;
	n = min_t(size_t, miter->length, *left);
	*next = miter->addr;
	*left -= n;
	return n;
}

/*
 * Runs @s over req->src into req->dst with compression (@compress) or
 * decompression; req->dlen gets the output's size.
 */
static int vaccel_zlib_run(struct z_stream_s *s, struct acomp_req *req,
			   bool compress)
{
	struct sg_mapping_iter in, out;
	unsigned int in_left = req->slen, out_left = req->dlen;
	int ret, err;
	u8 *next;

	s->avail_in = 0;
	s->avail_out = 0;
	sg_miter_start(&in, req->src, sg_nents(req->src), SG_MITER_FROM_SG);
	sg_miter_start(&out, req->dst, sg_nents(req->dst), SG_MITER_TO_SG);
	for (;;) {
		/* A list shorter than slen or dlen is invalid. */
		err = -EINVAL;
		if (!s->avail_in && in_left) {
			s->avail_in = vaccel_zlib_map(&in, &in_left, &next);
			if (!s->avail_in)
				break;
			s->next_in = next;
		}
		if (!s->avail_out && out_left) {
			s->avail_out = vaccel_zlib_map(&out, &out_left, &next);
			if (!s->avail_out)
				break;
			s->next_out = next;
		}

		if (compress)
			ret = zlib_deflate(s, in_left ? Z_NO_FLUSH : Z_FINISH);
		else
			ret = zlib_inflate(s, Z_SYNC_FLUSH);
		if (ret == Z_STREAM_END) {
			req->dlen = s->total_out;
			err = 0;
			break;
		}
		if (ret != Z_OK && ret != Z_BUF_ERROR)
			break;
		if (!s->avail_out && out_left)
			continue;
		/*
		 * More input: zlib may still progress without room (the end
		 * of the stream); no progress with input at hand means no
		 * room.
		 */
		if (s->avail_in || in_left) {
			if (ret == Z_BUF_ERROR && s->avail_in) {
				if (!s->avail_out)
					err = -ENOSPC;
				break;
			}
			continue;
		}
		/*
		 * All input is in and the stream has not ended: no room left,
		 * or a truncated stream. (No byte is made up past the input:
		 * the kernel's inflate, from zlib 1.2.3, ends a complete raw
		 * stream without one.)
		 */
		if (!s->avail_out)
			err = -ENOSPC;
		break;
	}
	sg_miter_stop(&in);
	sg_miter_stop(&out);
	return err;
}

static int vaccel_acomp_sw(struct vaccel_acomp_ctx *ctx, struct acomp_req *req,
			   bool compress)
{
	struct z_stream_s *s = compress ? &ctx->deflate : &ctx->inflate;
	int ret, err;

	mutex_lock(&ctx->sw_lock);
	ret = compress ? zlib_deflateReset(s) : zlib_inflateReset(s);
	err = ret == Z_OK ? vaccel_zlib_run(s, req, compress) : -EINVAL;
	mutex_unlock(&ctx->sw_lock);
	return err;
}

static void vaccel_acomp_sw_work(struct work_struct *work)
{
	struct vaccel_acomp_reqctx *rctx =
		container_of(work, struct vaccel_acomp_reqctx, sw_work);
	struct acomp_req *req = rctx->req;
	int err;

	err = vaccel_acomp_sw(vaccel_acomp_ctx(req), req, rctx->compress);
	/* Completions come with BH disabled, as from the device. */
	local_bh_disable();
	vaccel_acomp_complete(req, err);
	local_bh_enable();
}

/* Computes @req in software, in process context. */
static void vaccel_acomp_queue_sw(struct acomp_req *req)
{
	struct vaccel_acomp_reqctx *rctx = acomp_request_ctx(req);

	INIT_WORK(&rctx->sw_work, vaccel_acomp_sw_work);
	queue_work(vaccel_crypto_wq, &rctx->sw_work);
}

static void vaccel_acomp_done(struct vaccel_request *vreq)
{
	struct acomp_req *req = vreq->context;
	struct vaccel_acomp_reqctx *rctx = acomp_request_ctx(req);
	u32 status = vaccel_crypto_status(vreq);

	/* The core checked bytes_written against the output's length. */
	if (status == VIRTIO_ACCEL_S_OK) {
		req->dlen = le64_to_cpu(vreq->resp->bytes_written);
		vaccel_crypto_request_free(vreq);
		vaccel_acomp_complete(req, 0);
	} else if (status == VIRTIO_ACCEL_S_NO_SPACE && rctx->compress) {
		vaccel_crypto_request_free(vreq);
		vaccel_acomp_complete(req, -ENOSPC);
	} else {
		/* BadData and NoSpace too: see the top of this file. */
		vaccel_crypto_note_fallback(vaccel_acomp_ctx(req)->dev, vreq,
					    status);
		vaccel_crypto_request_free(vreq);
		vaccel_acomp_queue_sw(req);
	}
}

/* Builds the device request for @req; -EINPROGRESS or why not. */
static int vaccel_acomp_submit(struct acomp_req *req)
{
	struct vaccel_acomp_ctx *ctx = vaccel_acomp_ctx(req);
	struct vaccel_acomp_reqctx *rctx = acomp_request_ctx(req);
	struct virtio_accel_deflate_params params = {
		.format = VIRTIO_ACCEL_DEFLATE_RAW,
		.level = rctx->compress ? VACCEL_DEFLATE_LEVEL : 0,
	};
	struct vaccel_request *vreq;

	if (!ctx->dev)
		return -EOPNOTSUPP;
	vreq = vaccel_crypto_request(rctx->compress ?
				     VIRTIO_ACCEL_OP_DEFLATE_COMPRESS :
				     VIRTIO_ACCEL_OP_DEFLATE_DECOMPRESS,
				     req->base.flags, vaccel_acomp_done, req);
	if (!vreq)
		return -ENOMEM;
	memcpy(vreq->params, &params, sizeof(params));
	vreq->num_in = 1;
	vreq->num_out = 1;
	vaccel_crypto_buf(&vreq->bufs[0], req->src, req->slen);
	vaccel_crypto_buf(&vreq->bufs[1], req->dst, req->dlen);
	return vaccel_crypto_submit(ctx->dev, vreq, req->base.flags);
}

/* A NULL req->dst asks for an output allocated here, freed by dst_free. */
static int vaccel_acomp_alloc_dst(struct acomp_req *req)
{
	struct vaccel_acomp_reqctx *rctx = acomp_request_ctx(req);

	if (!req->dlen || req->dlen > CRYPTO_ACOMP_DST_MAX)
		req->dlen = CRYPTO_ACOMP_DST_MAX;
	req->dst = sgl_alloc(req->dlen, vaccel_crypto_gfp(req->base.flags),
			     NULL);
	if (!req->dst)
		return -ENOMEM;
	rctx->own_dst = true;
	return 0;
}

static int vaccel_acomp_run(struct acomp_req *req, bool compress)
{
	struct vaccel_acomp_reqctx *rctx = acomp_request_ctx(req);
	int err;

	if (!req->src || !req->slen || (req->dst && !req->dlen))
		return -EINVAL;
	rctx->req = req;
	rctx->compress = compress;
	rctx->own_dst = false;
	if (!req->dst) {
		err = vaccel_acomp_alloc_dst(req);
		if (err)
			return err;
	}
	if (vaccel_acomp_submit(req) != -EINPROGRESS)
		vaccel_acomp_queue_sw(req);
	return -EINPROGRESS;
}

static int vaccel_acomp_compress(struct acomp_req *req)
{
	return vaccel_acomp_run(req, true);
}

static int vaccel_acomp_decompress(struct acomp_req *req)
{
	return vaccel_acomp_run(req, false);
}

static void vaccel_acomp_free_streams(struct vaccel_acomp_ctx *ctx)
{
	kvfree(ctx->deflate.workspace);
	kvfree(ctx->inflate.workspace);
}

static int vaccel_acomp_init(struct crypto_acomp *tfm)
{
	struct vaccel_acomp_ctx *ctx = acomp_tfm_ctx(tfm);
	int err = -ENOMEM;

	memset(ctx, 0, sizeof(*ctx));
	ctx->deflate.workspace =
		kvzalloc(zlib_deflate_workspacesize(-VACCEL_SW_DEFLATE_WBITS,
						    MAX_MEM_LEVEL), GFP_KERNEL);
	ctx->inflate.workspace = kvzalloc(zlib_inflate_workspacesize(),
					  GFP_KERNEL);
	if (!ctx->deflate.workspace || !ctx->inflate.workspace)
		goto free_streams;
	err = -EINVAL;
	if (zlib_deflateInit2(&ctx->deflate, VACCEL_DEFLATE_LEVEL, Z_DEFLATED,
			      -VACCEL_SW_DEFLATE_WBITS, MAX_MEM_LEVEL,
			      Z_DEFAULT_STRATEGY) != Z_OK)
		goto free_streams;
	/* Any window (see the top of this file). */
	if (zlib_inflateInit2(&ctx->inflate, -MAX_WBITS) != Z_OK)
		goto end_deflate;
	mutex_init(&ctx->sw_lock);
	ctx->dev = vaccel_get_device(VIRTIO_ACCEL_OP_DEFLATE_COMPRESS);
	return 0;

end_deflate:
	zlib_deflateEnd(&ctx->deflate);
free_streams:
	vaccel_acomp_free_streams(ctx);
	return err;
}

static void vaccel_acomp_exit(struct crypto_acomp *tfm)
{
	struct vaccel_acomp_ctx *ctx = acomp_tfm_ctx(tfm);

	vaccel_put_device(ctx->dev);
	mutex_destroy(&ctx->sw_lock);
	zlib_inflateEnd(&ctx->inflate);
	zlib_deflateEnd(&ctx->deflate);
	vaccel_acomp_free_streams(ctx);
}

static struct acomp_alg vaccel_acomp_alg = {
	.compress = vaccel_acomp_compress,
	.decompress = vaccel_acomp_decompress,
	.dst_free = sgl_free,
	.init = vaccel_acomp_init,
	.exit = vaccel_acomp_exit,
	.reqsize = sizeof(struct vaccel_acomp_reqctx),
	.base = {
		.cra_name = "deflate",
		.cra_driver_name = "deflate-virtio-accel",
		.cra_flags = CRYPTO_ALG_ASYNC | CRYPTO_ALG_KERN_DRIVER_ONLY |
			     CRYPTO_ALG_ALLOCATES_MEMORY,
		.cra_ctxsize = sizeof(struct vaccel_acomp_ctx),
		.cra_module = THIS_MODULE,
	},
};

int vaccel_acomp_register(int priority)
{
	vaccel_acomp_alg.base.cra_priority = priority;
	return crypto_register_acomp(&vaccel_acomp_alg);
}

void vaccel_acomp_unregister(void)
{
	crypto_unregister_acomp(&vaccel_acomp_alg);
}
