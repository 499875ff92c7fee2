/* SPDX-License-Identifier: GPL-2.0 OR MIT */
/*
 * virtio_accel: what the crypto API providers share (crypto.c).
 *
 * Every provider works the same way: a transform takes a device at init
 * (vaccel_get_device()) and keeps it; a request that the device can take
 * is submitted to it and completed from its done callback; everything else
 * is computed in software: requests the device cannot take (no device, a
 * key or tag size it lacks, too many scatterlist entries, no memory) and
 * requests it failed (a reset or removal, Busy, DeviceError, any status
 * that is not a verdict on the data). Verdicts on the data (AuthFailed,
 * NoSpace on compression) are the caller's answer.
 */
#ifndef VIRTIO_ACCEL_CRYPTO_H
#define VIRTIO_ACCEL_CRYPTO_H

#include <linux/gfp.h>
#include <linux/scatterlist.h>
#include <linux/types.h>
#include <linux/workqueue.h>

#include "virtio_accel.h"

/*
 * Process context for the software paths that need it (deflate); it may
 * run during memory reclaim (zswap), so it has a rescuer.
 */
extern struct workqueue_struct *vaccel_crypto_wq;

/* gfp flags for a request with crypto request flags @req_flags. */
gfp_t vaccel_crypto_gfp(u32 req_flags);

/*
 * A device request for @op, or NULL without memory; @done gets @context
 * back. The caller sets the parameter block and the buffers.
 */
struct vaccel_request *vaccel_crypto_request(u32 op, u32 req_flags,
					     vaccel_done_fn done,
					     void *context);

/* Sets @buf to the @len direct bytes at the start of @sg (§6.3). */
void vaccel_crypto_buf(struct vaccel_buf *buf, struct scatterlist *sg,
		       unsigned int len);

/*
 * Submits @vreq to @dev: -EINPROGRESS when @done will be called, another
 * negative errno (@vreq freed) when the device cannot take it.
 */
int vaccel_crypto_submit(struct vaccel_device *dev,
			 struct vaccel_request *vreq, u32 req_flags);

/*
 * The device status of a completed request: VIRTIO_ACCEL_S_OK, the
 * device's failure status, or VIRTIO_ACCEL_S_DEVICE_ERROR when the request
 * failed without one (reset, removal, a response the core rejected).
 */
u32 vaccel_crypto_status(const struct vaccel_request *vreq);

/* Frees a completed request, clearing the key material it may hold. */
void vaccel_crypto_request_free(struct vaccel_request *vreq);

/* Logs (rate-limited) that @vreq failed on @vdev with @status. */
void vaccel_crypto_note_fallback(struct vaccel_device *vdev,
				 const struct vaccel_request *vreq, u32 status);

/* Whether bytes [0, @alen) of @a and [0, @blen) of @b share memory. */
bool vaccel_crypto_sg_overlap(struct scatterlist *a, unsigned int alen,
			      struct scatterlist *b, unsigned int blen);

/* Calls @fn on the first @len bytes of @sg, chunk by chunk; any context. */
void vaccel_crypto_sg_walk(struct scatterlist *sg, unsigned int len,
			   void (*fn)(void *state, const u8 *data,
				      unsigned int len),
			   void *state);

/* The providers of each type, registered with cra_priority @priority. */
int vaccel_hash_register(int priority);
void vaccel_hash_unregister(void);
int vaccel_aead_register(int priority);
void vaccel_aead_unregister(void);
int vaccel_acomp_register(int priority);
void vaccel_acomp_unregister(void);

#endif /* VIRTIO_ACCEL_CRYPTO_H */
