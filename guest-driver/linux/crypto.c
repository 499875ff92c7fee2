// SPDX-License-Identifier: GPL-2.0 OR MIT
/*
 * virtio_accel: the crypto API providers (issue 13 item 4).
 *
 * crc32c and sha256 (ahash, crypto_hash.c), gcm(aes) (aead, crypto_aead.c)
 * and deflate (acomp, crypto_acomp.c) on the device's CRC32C, SHA256,
 * AES_GCM_SEAL/OPEN and DEFLATE_COMPRESS/DECOMPRESS operations (spec §8),
 * each with a software path for what the device cannot do or fails to do
 * (crypto.h). This file holds what they share and their registration.
 *
 * Priorities (cra_priority): by default 120, above the kernel's portable C
 * implementations (sha256-generic, crc32c-generic and
 * gcm_base(ctr(aes-generic),ghash-generic) have 100, deflate's software
 * implementations 0) and below every x86 SIMD one (sha256-ssse3 150 and up,
 * crc32c-intel 200, generic-gcm-aesni 400 and up). With prefer_device=1
 * they get 1000, above all of those (generic-gcm-vaes-avx10_512 has 800).
 * Any provider can also be asked for by its driver name, e.g.
 * "sha256-virtio-accel", whatever its priority.
 */
#include <linux/crypto.h>
#include <linux/device.h>
#include <linux/minmax.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/string.h>

#include "crypto.h"

#define VACCEL_CRYPTO_PRIORITY			120
#define VACCEL_CRYPTO_PRIORITY_PREFERRED	1000

static bool prefer_device;
module_param(prefer_device, bool, 0444);
MODULE_PARM_DESC(prefer_device,
		 "Give the device's crc32c, sha256, gcm(aes) and deflate priority over the CPU's optimized implementations (default: no, they rank below them)");

struct workqueue_struct *vaccel_crypto_wq;

gfp_t vaccel_crypto_gfp(u32 req_flags)
{
	return req_flags & CRYPTO_TFM_REQ_MAY_SLEEP ? GFP_KERNEL : GFP_ATOMIC;
}

struct vaccel_request *vaccel_crypto_request(u32 op, u32 req_flags,
					     vaccel_done_fn done,
					     void *context)
{
	struct vaccel_request *vreq;

	vreq = vaccel_request_alloc(vaccel_crypto_gfp(req_flags));
	if (!vreq)
		return NULL;
	vreq->op = op;
	memset(vreq->params, 0, sizeof(vreq->params));
	vreq->num_in = 0;
	vreq->num_out = 0;
	vreq->num_deps = 0;
	vreq->queue = VACCEL_ANY_QUEUE;
	vreq->done = done;
	vreq->context = context;
	return vreq;
}

void vaccel_crypto_buf(struct vaccel_buf *buf, struct scatterlist *sg,
		       unsigned int len)
{
	buf->handle = VIRTIO_ACCEL_DIRECT_HANDLE;
	buf->offset = 0;
	buf->len = len;
	buf->sg = len ? sg : NULL;
}

void vaccel_crypto_request_free(struct vaccel_request *vreq)
{
	memzero_explicit(vreq->params, sizeof(vreq->params));
	vaccel_request_free(vreq);
}

int vaccel_crypto_submit(struct vaccel_device *dev,
			 struct vaccel_request *vreq, u32 req_flags)
{
	int err = vaccel_submit(dev, vreq, vaccel_crypto_gfp(req_flags));

	if (err) {
		vaccel_crypto_request_free(vreq);
		return err;
	}
	return -EINPROGRESS;
}

u32 vaccel_crypto_status(const struct vaccel_request *vreq)
{
	u32 status;

	if (!vreq->error)
		return VIRTIO_ACCEL_S_OK;
	if (!vreq->resp)
		return VIRTIO_ACCEL_S_DEVICE_ERROR;
	status = le32_to_cpu(vreq->resp->status);
	return status == VIRTIO_ACCEL_S_OK ? VIRTIO_ACCEL_S_DEVICE_ERROR :
					     status;
}

void vaccel_crypto_note_fallback(struct vaccel_device *vdev,
				 const struct vaccel_request *vreq, u32 status)
{
	struct device *dev = vaccel_dev(vdev);

	/*
	 * Busy is a host quota (§10.3), DeviceError a failure of the device,
	 * Interrupted a restart of the device while the request ran (§9).
	 */
	if (status == VIRTIO_ACCEL_S_BUSY ||
	    status == VIRTIO_ACCEL_S_DEVICE_ERROR ||
	    status == VIRTIO_ACCEL_S_INTERRUPTED)
		dev_dbg_ratelimited(dev, "op %u: status %u (error %d), computed in software\n",
				    vreq->op, status, vreq->error);
	else
		dev_warn_ratelimited(dev, "op %u: unexpected status %u, computed in software\n",
				     vreq->op, status);
}

/* Whether [@pa, @pa + @alen) shares memory with bytes [0, @blen) of @b. */
static bool vaccel_range_overlaps(phys_addr_t pa, unsigned int alen,
				  struct scatterlist *b, unsigned int blen)
{
	for (; b && blen; b = sg_next(b)) {
		unsigned int n = min(b->length, blen);
		phys_addr_t pb = sg_phys(b);

		if (n && pa < pb + n && pb < pa + alen)
			return true;
		blen -= n;
	}
	return false;
}

bool vaccel_crypto_sg_overlap(struct scatterlist *a, unsigned int alen,
			      struct scatterlist *b, unsigned int blen)
{
	for (; a && alen; a = sg_next(a)) {
		unsigned int n = min(a->length, alen);

		if (n && vaccel_range_overlaps(sg_phys(a), n, b, blen))
			return true;
		alen -= n;
	}
	return false;
}

void vaccel_crypto_sg_walk(struct scatterlist *sg, unsigned int len,
			   void (*fn)(void *state, const u8 *data,
				      unsigned int len),
			   void *state)
{
	struct sg_mapping_iter miter;

	if (!len)
		return;
	sg_miter_start(&miter, sg, sg_nents(sg),
		       SG_MITER_ATOMIC | SG_MITER_FROM_SG);
	while (len && sg_miter_next(&miter)) {
		unsigned int n = min_t(size_t, miter.length, len);

		fn(state, miter.addr, n);
		len -= n;
	}
	sg_miter_stop(&miter);
}

int vaccel_crypto_init(void)
{
	int priority = prefer_device ? VACCEL_CRYPTO_PRIORITY_PREFERRED :
				       VACCEL_CRYPTO_PRIORITY;
	int err;

	vaccel_crypto_wq = alloc_workqueue("virtio_accel_crypto",
					   WQ_MEM_RECLAIM | WQ_UNBOUND, 0);
	if (!vaccel_crypto_wq)
		return -ENOMEM;
	err = vaccel_hash_register(priority);
	if (err)
		goto destroy_wq;
	err = vaccel_aead_register(priority);
	if (err)
		goto unregister_hash;
	err = vaccel_acomp_register(priority);
	if (err)
		goto unregister_aead;
	return 0;

unregister_aead:
	vaccel_aead_unregister();
unregister_hash:
	vaccel_hash_unregister();
destroy_wq:
	destroy_workqueue(vaccel_crypto_wq);
	return err;
}

void vaccel_crypto_exit(void)
{
	vaccel_acomp_unregister();
	vaccel_aead_unregister();
	vaccel_hash_unregister();
	destroy_workqueue(vaccel_crypto_wq);
}
