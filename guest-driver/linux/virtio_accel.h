/* SPDX-License-Identifier: GPL-2.0 OR MIT */
/*
 * virtio_accel: the driver's internal interface.
 *
 * main.c owns the virtio device (spec/virtio-accel.md §5.3): its virtqueues,
 * the requests in flight, the control commands and the recovery from a
 * device that stops answering. The users of the device (crypto.c, the
 * crypto API providers; drm.c, the accel device node) build requests and
 * get them back through a callback; they never touch a virtqueue.
 */
#ifndef VIRTIO_ACCEL_H
#define VIRTIO_ACCEL_H

#include <linux/list.h>
#include <linux/scatterlist.h>
#include <linux/types.h>
#include <linux/virtio_accel.h>

/* Most buffer references of an operation (§8: AES-GCM has three). */
#define VACCEL_MAX_BUFS		3
/* Most dependencies of one request that this driver sends (§6.2). */
#define VACCEL_MAX_DEPS		8
/* Pick the request queue of the submitting CPU. */
#define VACCEL_ANY_QUEUE	(-1)

struct vaccel_device;
struct vaccel_request;

/*
 * Called once per submitted request, with BH disabled: from the completion
 * work (softirq) when the device completes it, from the task that resets or
 * removes the device when that fails it.
 */
typedef void (*vaccel_done_fn)(struct vaccel_request *req);

/*
 * One buffer of a request (§6.3). A direct buffer (handle 0) is data in the
 * chain: @sg holds at least @len bytes from its start (the core describes
 * exactly @len bytes of it to the device; the memory must be DMA-able, not
 * on the stack). An object buffer is bytes [@offset, @offset + @len) of the
 * device object @handle, and has no @sg.
 */
struct vaccel_buf {
	u32 handle;
	u64 offset;
	u64 len;
	struct scatterlist *sg;
};

/*
 * A request (§6): allocated with vaccel_request_alloc(), filled in by the
 * caller, given to vaccel_submit(), handed back through @done.
 */
struct vaccel_request {
	/* Set by the caller. */
	u32 op;				/* VIRTIO_ACCEL_OP_* */
	u8 params[VIRTIO_ACCEL_PARAMS_SIZE];	/* §8 parameter block */
	unsigned int num_in;
	unsigned int num_out;
	struct vaccel_buf bufs[VACCEL_MAX_BUFS];	/* inputs, then outputs */
	unsigned int num_deps;
	struct virtio_accel_fence deps[VACCEL_MAX_DEPS];	/* wire format */
	int queue;			/* request queue, or VACCEL_ANY_QUEUE */
	vaccel_done_fn done;
	void *context;

	/*
	 * Set by the core. @fence is the fence the device issues to the
	 * request (§6.2), known from the moment the chain is in the ring
	 * (@fence_known). Before @done: @error is 0 when the device
	 * completed the request with Ok, vaccel_status_errno() of its status
	 * otherwise, or -ETIMEDOUT / -ENODEV / -EIO when the device was reset
	 * or removed with the request in flight (the device status then is
	 * VIRTIO_ACCEL_S_DEVICE_ERROR). A request that the device returned out
	 * of step with the driver (a used length or a fence that cannot be
	 * right) is one of those: it is handed back only after the reset, the
	 * device may write its buffers until then. That protects only buffers
	 * the device reaches by their guest physical address: where the DMA
	 * API maps them (VIRTIO_F_ACCESS_PLATFORM behind an IOMMU, swiotlb
	 * bounce buffers as in confidential guests), virtqueue_get_buf() has
	 * unmapped the chain before the driver can tell that it is out of
	 * step, and a late write of the device may land in an IOVA or a
	 * bounce slot already released, and perhaps reused. @resp is the
	 * device's response.
	 */
	struct virtio_accel_fence fence;
	bool fence_known;
	int error;
	struct virtio_accel_resp *resp;

	/* Private to main.c. */
	struct vaccel_device *dev;
	struct list_head node;
	unsigned long submitted;	/* jiffies when the chain was added */
	unsigned int nents;		/* entries used in @sgs */
	struct scatterlist *sgs;	/* entries of the chain */
	void *wire;			/* header, deps, refs and response */
};

/* The device's configuration (§5), in CPU byte order, and its capabilities. */
struct vaccel_info {
	u32 num_request_queues;		/* request queues this driver uses */
	u32 ops;			/* bit n: operation n */
	u32 max_segments;
	u32 max_deps;
	u32 max_objects;
	u32 max_inflight;
	u64 max_object_size;
	u64 max_buffer_size;
	u64 capabilities;		/* BIT(VIRTIO_ACCEL_F_*) enabled */
};

/* Users of the device: told when one comes and goes, and after a reset. */
struct vaccel_client {
	struct list_head node;		/* private to main.c */
	unsigned int slot;		/* private to main.c */
	int (*add)(struct vaccel_device *dev);
	void (*remove)(struct vaccel_device *dev);
	/*
	 * The device was reset (a timeout, or resume from suspend): every
	 * object is gone and fence numbering restarted (§11). Process
	 * context; no request of the client is in flight any more.
	 */
	void (*reset)(struct vaccel_device *dev);
};

int vaccel_register_client(struct vaccel_client *client);
void vaccel_unregister_client(struct vaccel_client *client);

/* Requests. */
struct vaccel_request *vaccel_request_alloc(gfp_t gfp);
void vaccel_request_free(struct vaccel_request *req);
int vaccel_submit(struct vaccel_device *dev, struct vaccel_request *req,
		  gfp_t gfp);
int vaccel_status_errno(u32 status);

/* Control commands (§7): process context, may sleep. */
int vaccel_object_create(struct vaccel_device *dev,
			 const struct virtio_accel_mem_seg *segs,
			 unsigned int count, u32 *handle);
int vaccel_object_destroy(struct vaccel_device *dev, u32 handle);
int vaccel_fence_query(struct vaccel_device *dev,
		       const struct virtio_accel_fence *fence,
		       bool *signalled);

/* The device. */
const struct vaccel_info *vaccel_info(struct vaccel_device *dev);
bool vaccel_has_op(struct vaccel_device *dev, u32 op);
struct device *vaccel_dev(struct vaccel_device *dev);
void *vaccel_client_data(struct vaccel_device *dev, struct vaccel_client *client);
void vaccel_set_client_data(struct vaccel_device *dev,
			    struct vaccel_client *client, void *data);
/* A bound device that supports @op, with a reference, or NULL. */
struct vaccel_device *vaccel_get_device(u32 op);
void vaccel_put_device(struct vaccel_device *dev);

/* crypto.c: the crypto API providers, registered while the module is loaded. */
int vaccel_crypto_init(void);
void vaccel_crypto_exit(void);

/* drm.c: the accel device node of each device, a client. */
int vaccel_drm_init(void);
void vaccel_drm_exit(void);

#endif /* VIRTIO_ACCEL_H */
