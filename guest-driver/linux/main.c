// SPDX-License-Identifier: GPL-2.0 OR MIT
/*
 * virtio_accel: driver of the virtio accelerator device (spec/virtio-accel.md).
 *
 * This file owns the virtio device: initialization and the checks of its
 * configuration (§5.3, §5.2), capabilities (§3, §7.5), the control queue
 * (§7), the request queues (§6) with their requests in flight and a backlog
 * for full rings, and recovery: a watchdog resets a device that leaves a
 * request unanswered for longer than the `timeout` parameter, failing
 * what was in flight (§11.1), and a device that returns a request out of
 * step with the driver is reset too. Users of the device (crypto.c, drm.c)
 * go through virtio_accel.h.
 */
#include <linux/delay.h>
#include <linux/interrupt.h>
#include <linux/jiffies.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/mutex.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/virtio.h>
#include <linux/virtio_config.h>
#include <linux/virtio_ring.h>
#include <linux/workqueue.h>

#include "virtio_accel.h"

static_assert(sizeof(struct virtio_accel_config) == 40);
static_assert(sizeof(struct virtio_accel_req) == 80);
static_assert(sizeof(struct virtio_accel_fence) == 16);
static_assert(sizeof(struct virtio_accel_bufref) == 24);
static_assert(sizeof(struct virtio_accel_resp) == 64);
static_assert(sizeof(struct virtio_accel_ctrl_req) == 16);
static_assert(sizeof(struct virtio_accel_ctrl_resp) == 16);
static_assert(sizeof(struct virtio_accel_mem_seg) == 16);
static_assert(sizeof(struct virtio_accel_aes_gcm_params) == 64);

/* Operations defined by the specification: bits 1 to 9 (§5). */
#define VACCEL_KNOWN_OPS	GENMASK(VIRTIO_ACCEL_OP_DEFLATE_DECOMPRESS, 1)
#define VACCEL_KNOWN_CAPS	(BIT_ULL(VIRTIO_ACCEL_F_OBJECTS) | \
				 BIT_ULL(VIRTIO_ACCEL_F_FENCES))
#define VACCEL_MAX_CLIENTS	4

static unsigned int timeout_secs = 30;

static int timeout_set(const char *val, const struct kernel_param *kp)
{
	return param_set_uint_minmax(val, kp, 1, 3600);
}

static const struct kernel_param_ops timeout_ops = {
	.set = timeout_set,
	.get = param_get_uint,
};

module_param_cb(timeout, &timeout_ops, &timeout_secs, 0644);
MODULE_PARM_DESC(timeout,
		 "Seconds a request or command may wait for the device before the driver resets it, failing what was in flight (1-3600, default 30)");

/* A request queue (§6): virtqueue index + 1. */
struct vaccel_queue {
	struct vaccel_device *dev;
	struct virtqueue *vq;
	spinlock_t lock;		/* everything below */
	struct list_head inflight;	/* in the ring, oldest first */
	struct list_head backlog;	/* waiting for room in the ring */
	struct list_head parked;	/* returned out of step: vaccel_park() */
	u64 next_seqno;			/* the fence of the next chain (§6.2) */
	unsigned long last_progress;	/* jiffies of the last completion */
	unsigned int index;
	struct work_struct done_work;	/* on system_bh_wq */
	char name[20];
};

/* A control command (§7) with its entries, in DMA-able memory. */
struct vaccel_ctrl {
	struct virtio_accel_ctrl_resp resp;
	struct completion done;
	int error;
	struct virtio_accel_ctrl_req req;
	u8 entries[];
};

enum vaccel_state {
	VACCEL_STOPPED,		/* no virtqueues: probing, resetting, removed */
	VACCEL_STARTING,	/* virtqueues up, capabilities being asked */
	VACCEL_LIVE,
	VACCEL_DRAINING,	/* suspending: what it holds finishes, no more */
};

struct vaccel_device {
	struct virtio_device *vdev;
	struct kref ref;
	struct list_head node;		/* in vaccel_devices */
	struct vaccel_info info;
	enum vaccel_state state;	/* written under every lock below */
	bool removed;
	/*
	 * A reset is due (vaccel_park()): nothing more goes to a ring. Set
	 * by vaccel_park() under the lock of the queue that parked, cleared
	 * only by vaccel_stop() under state_mutex, after the reset and with
	 * the state STOPPED (vaccel_start() then sets LIVE under every lock,
	 * after the clear); written with WRITE_ONCE(), read with READ_ONCE().
	 * Under a queue's lock it is exact for that queue: nothing is added
	 * or refilled behind a parked request. Elsewhere (another queue,
	 * control commands, the watchdog, freeze) it may be seen late, and a
	 * request may still reach another ring: the reset fails it as any
	 * other in flight.
	 */
	bool halted;
	int stop_error;			/* how a reset fails requests */
	unsigned int ring_limit;	/* most descriptors of one chain */

	struct virtqueue *ctrl_vq;
	spinlock_t ctrl_lock;		/* ctrl_vq, ctrl_pending, state */
	struct mutex ctrl_mutex;	/* one control command at a time */
	struct vaccel_ctrl *ctrl_pending;
	unsigned long ctrl_submitted;

	struct vaccel_queue *queues;	/* info.num_request_queues */

	struct mutex state_mutex;	/* start, stop, reset, remove */
	struct delayed_work watchdog;
	struct work_struct reset_work;
	struct delayed_work restart_work;	/* after a failed restart */
	unsigned int restart_delay;		/* its back-off, in seconds */
	void *client_data[VACCEL_MAX_CLIENTS];
};

/* Bound devices and registered clients. */
static DEFINE_MUTEX(vaccel_lock);
static LIST_HEAD(vaccel_devices);
static LIST_HEAD(vaccel_clients);
static unsigned long vaccel_client_slots;
static unsigned int vaccel_next_device;

int vaccel_status_errno(u32 status)
{
	switch (status) {
	case VIRTIO_ACCEL_S_OK:
		return 0;
	case VIRTIO_ACCEL_S_INVALID:
		return -EINVAL;
	case VIRTIO_ACCEL_S_UNSUPPORTED:
		return -EOPNOTSUPP;
	case VIRTIO_ACCEL_S_NO_OBJECT:
		return -ENOENT;
	case VIRTIO_ACCEL_S_NO_FENCE:
		return -ESRCH;
	case VIRTIO_ACCEL_S_RANGE:
		return -ERANGE;
	case VIRTIO_ACCEL_S_BAD_ADDRESS:
		return -EFAULT;
	case VIRTIO_ACCEL_S_LIMIT:
		return -E2BIG;
	case VIRTIO_ACCEL_S_NO_SPACE:
		return -ENOSPC;
	case VIRTIO_ACCEL_S_BAD_DATA:
		return -EILSEQ;
	case VIRTIO_ACCEL_S_AUTH_FAILED:
		return -EBADMSG;
	case VIRTIO_ACCEL_S_BUSY:
		return -EBUSY;
	case VIRTIO_ACCEL_S_NO_RESOURCES:
		return -ENOBUFS;
	case VIRTIO_ACCEL_S_INTERRUPTED:
		/* The device restarted mid-request; the input may be overwritten. */
		return -ECANCELED;
	default:		/* DeviceError, and values this driver does not know (§9.1) */
		return -EIO;
	}
}
EXPORT_SYMBOL_GPL(vaccel_status_errno);

const struct vaccel_info *vaccel_info(struct vaccel_device *dev)
{
	return &dev->info;
}

bool vaccel_has_op(struct vaccel_device *dev, u32 op)
{
	return op < 32 && (dev->info.ops & BIT(op));
}

struct device *vaccel_dev(struct vaccel_device *dev)
{
	return &dev->vdev->dev;
}

/*
 * Asks for a reset of the device (§11.1): from the watchdog, or when the
 * device returns a request out of step with the driver (vaccel_park()).
 * The reset looks for its cause when it runs (vaccel_reset_cause()): one
 * asked for during another is done after it, and finds no cause unless a
 * new one arose. Returns false if a reset was queued already and has not
 * started. Any context.
 */
static bool vaccel_schedule_reset(struct vaccel_device *dev)
{
	return queue_work(system_freezable_wq, &dev->reset_work);
}

/* ---- Requests (§6) ---- */

struct vaccel_request *vaccel_request_alloc(gfp_t gfp)
{
	struct vaccel_request *req = kzalloc(sizeof(*req), gfp);

	if (req) {
		req->queue = VACCEL_ANY_QUEUE;
		INIT_LIST_HEAD(&req->node);
	}
	return req;
}

static void vaccel_request_release_chain(struct vaccel_request *req)
{
	kfree(req->sgs);
	req->sgs = NULL;
	/* The header may hold a key (§8.6, §12.6). */
	kfree_sensitive(req->wire);
	req->wire = NULL;
	req->resp = NULL;
}

void vaccel_request_free(struct vaccel_request *req)
{
	if (!req)
		return;
	vaccel_request_release_chain(req);
	kfree_sensitive(req);	/* params may hold a key */
}

/* The buffer references' sizes: the readable part's fixed bytes (§6). */
static size_t vaccel_header_size(const struct vaccel_request *req)
{
	return sizeof(struct virtio_accel_req) +
	       req->num_deps * sizeof(struct virtio_accel_fence) +
	       (req->num_in + req->num_out) * sizeof(struct virtio_accel_bufref);
}

/* Checks what the device would reject (§6.1.1, §6.2.1, §6.3.1). */
static int vaccel_check_request(struct vaccel_device *dev,
				const struct vaccel_request *req)
{
	const struct vaccel_info *info = &dev->info;
	unsigned int i;

	if (!vaccel_has_op(dev, req->op))
		return -EOPNOTSUPP;
	if (req->num_in + req->num_out > VACCEL_MAX_BUFS ||
	    req->num_deps > VACCEL_MAX_DEPS || !req->done)
		return -EINVAL;
	if (req->num_deps &&
	    (!(info->capabilities & BIT_ULL(VIRTIO_ACCEL_F_FENCES)) ||
	     req->num_deps > info->max_deps))
		return -EOPNOTSUPP;
	if (req->queue != VACCEL_ANY_QUEUE &&
	    (req->queue < 0 || req->queue >= info->num_request_queues))
		return -EINVAL;
	for (i = 0; i < req->num_in + req->num_out; i++) {
		const struct vaccel_buf *buf = &req->bufs[i];

		if (buf->len > info->max_buffer_size)
			return -E2BIG;
		if (buf->handle == VIRTIO_ACCEL_DIRECT_HANDLE) {
			if (buf->len && !buf->sg)
				return -EINVAL;
		} else if (!(info->capabilities &
			     BIT_ULL(VIRTIO_ACCEL_F_OBJECTS))) {
			return -EOPNOTSUPP;
		}
	}
	return 0;
}

/* Writes the readable part's header, fences and references (§6.1-§6.3). */
static void vaccel_write_header(const struct vaccel_request *req, void *wire)
{
	struct virtio_accel_req *hdr = wire;
	struct virtio_accel_fence *deps = wire + sizeof(*hdr);
	struct virtio_accel_bufref *refs = (void *)(deps + req->num_deps);
	unsigned int i;

	hdr->op = cpu_to_le32(req->op);
	hdr->num_deps = cpu_to_le16(req->num_deps);
	hdr->num_in = req->num_in;
	hdr->num_out = req->num_out;
	memcpy(hdr->params, req->params, sizeof(hdr->params));
	memcpy(deps, req->deps, req->num_deps * sizeof(*deps));
	for (i = 0; i < req->num_in + req->num_out; i++) {
		const struct vaccel_buf *buf = &req->bufs[i];

		refs[i].handle = cpu_to_le32(buf->handle);
		refs[i].offset = cpu_to_le64(buf->handle ? buf->offset : 0);
		refs[i].len = cpu_to_le64(buf->len);
	}
}

/* Scatterlist entries that a direct buffer needs, or a negative errno. */
static int vaccel_buf_nents(const struct vaccel_buf *buf)
{
	if (buf->handle != VIRTIO_ACCEL_DIRECT_HANDLE || !buf->len)
		return 0;
	return sg_nents_for_len(buf->sg, buf->len);
}

/*
 * Copies the entries of @buf's list that cover its first len bytes into
 * @out, ending the copy's list there; returns the entries used.
 */
static unsigned int vaccel_buf_to_sg(const struct vaccel_buf *buf,
				     struct scatterlist *out)
{
	struct scatterlist *sg;
	u64 left = buf->len;
	unsigned int n = 0;

	for (sg = buf->sg; sg && left; sg = sg_next(sg)) {
		unsigned int part = min_t(u64, sg->length, left);

		if (!part)
			continue;
		sg_set_page(&out[n++], sg_page(sg), part, sg->offset);
		left -= part;
	}
	sg_mark_end(&out[n - 1]);
	return n;
}

/*
 * Builds the chain: the readable part (header, then the direct inputs in
 * order) and the writable part (response, then the direct outputs), §6.3.
 */
static int vaccel_build_chain(struct vaccel_device *dev,
			      struct vaccel_request *req, gfp_t gfp)
{
	size_t header = vaccel_header_size(req);
	unsigned int i, nents = 2;
	int len;

	for (i = 0; i < req->num_in + req->num_out; i++) {
		len = vaccel_buf_nents(&req->bufs[i]);
		if (len < 0)
			return len;
		nents += len;
	}
	if (nents > dev->info.max_segments || nents > READ_ONCE(dev->ring_limit))
		return -E2BIG;
	req->wire = kzalloc(header + sizeof(struct virtio_accel_resp), gfp);
	req->sgs = kmalloc_array(nents, sizeof(*req->sgs), gfp);
	if (!req->wire || !req->sgs) {
		vaccel_request_release_chain(req);
		return -ENOMEM;
	}
	sg_init_table(req->sgs, nents);
	req->nents = nents;
	req->resp = req->wire + header;
	vaccel_write_header(req, req->wire);
	return 0;
}

/* Appends @buf's entries to @sgs and their list to @lists, if not empty. */
static unsigned int vaccel_add_list(struct scatterlist **lists,
				    unsigned int n, struct scatterlist *sgs,
				    unsigned int *used,
				    const struct vaccel_buf *buf)
{
	if (!vaccel_buf_nents(buf))
		return n;
	lists[n] = &sgs[*used];
	*used += vaccel_buf_to_sg(buf, &sgs[*used]);
	return n + 1;
}

/* Adds @req's chain to the ring; the caller holds q->lock. */
static int vaccel_queue_add(struct vaccel_queue *q, struct vaccel_request *req)
{
	struct scatterlist *lists[2 + VACCEL_MAX_BUFS];
	unsigned int i, readable, n = 0, used = 0;
	struct vaccel_buf header = {
		.len = vaccel_header_size(req),
	};
	struct vaccel_buf resp = {
		.len = sizeof(*req->resp),
	};
	struct scatterlist header_sg, resp_sg;
	int err;

	sg_init_one(&header_sg, req->wire, header.len);
	sg_init_one(&resp_sg, req->resp, resp.len);
	header.sg = &header_sg;
	resp.sg = &resp_sg;
	n = vaccel_add_list(lists, n, req->sgs, &used, &header);
	for (i = 0; i < req->num_in; i++)
		n = vaccel_add_list(lists, n, req->sgs, &used, &req->bufs[i]);
	readable = n;
	n = vaccel_add_list(lists, n, req->sgs, &used, &resp);
	for (; i < req->num_in + req->num_out; i++)
		n = vaccel_add_list(lists, n, req->sgs, &used, &req->bufs[i]);

	err = virtqueue_add_sgs(q->vq, lists, readable, n - readable, req,
				GFP_ATOMIC);
	/* A chain longer than an empty ring never fits. */
	if (err == -ENOSPC && list_empty(&q->inflight))
		err = -E2BIG;
	if (err)
		return err;
	if (list_empty(&q->inflight))
		q->last_progress = jiffies;
	/* The k-th chain of a queue gets sequence number k (§6.2). */
	req->fence.seqno = cpu_to_le64(q->next_seqno++);
	req->fence.queue = cpu_to_le16(q->index);
	/* Pairs with readers' smp_load_acquire(), on any CPU. */
	smp_store_release(&req->fence_known, true);
	req->submitted = jiffies;
	list_add_tail(&req->node, &q->inflight);
	return 0;
}

/*
 * Moves backlogged requests into the ring while it has room; under q->lock.
 * Requests that can never be added go to @failed.
 */
static bool vaccel_queue_refill(struct vaccel_queue *q, struct list_head *failed)
{
	struct vaccel_request *req, *next;
	bool added = false;
	int err;

	list_for_each_entry_safe(req, next, &q->backlog, node) {
		list_del_init(&req->node);
		err = vaccel_queue_add(q, req);
		if (err == -ENOSPC) {
			list_add(&req->node, &q->backlog);
			break;
		}
		if (err) {
			req->error = err;
			list_add_tail(&req->node, failed);
		}
		added |= !err;
	}
	return added;
}

static struct vaccel_queue *vaccel_pick_queue(struct vaccel_device *dev,
					      int queue)
{
	if (queue == VACCEL_ANY_QUEUE)
		queue = raw_smp_processor_id() % dev->info.num_request_queues;
	return &dev->queues[queue];
}

int vaccel_submit(struct vaccel_device *dev, struct vaccel_request *req,
		  gfp_t gfp)
{
	struct vaccel_queue *q;
	unsigned long flags;
	int err;

	err = vaccel_check_request(dev, req);
	if (err)
		return err;
	req->dev = dev;
	req->fence_known = false;
	req->error = 0;
	vaccel_request_release_chain(req);
	err = vaccel_build_chain(dev, req, gfp);
	if (err)
		return err;
	q = vaccel_pick_queue(dev, req->queue);

	/*
	 * The virtqueue is used, notified included, under q->lock only:
	 * vaccel_stop() takes it away under the same lock. A halted device
	 * takes nothing more until its reset (vaccel_park()).
	 */
	spin_lock_irqsave(&q->lock, flags);
	if (dev->state != VACCEL_LIVE || READ_ONCE(dev->halted)) {
		err = dev->removed ? -ENODEV : -EAGAIN;
	} else if (list_empty(&q->backlog)) {
		err = vaccel_queue_add(q, req);
		if (err == -ENOSPC) {
			/* The ring is full: wait for a completion. */
			list_add_tail(&req->node, &q->backlog);
			err = 0;
		} else if (!err) {
			virtqueue_kick(q->vq);
		}
	} else {
		list_add_tail(&req->node, &q->backlog);
	}
	spin_unlock_irqrestore(&q->lock, flags);
	if (err)
		vaccel_request_release_chain(req);
	return err;
}
EXPORT_SYMBOL_GPL(vaccel_submit);

/*
 * Output bytes a request provides, to bound bytes_written and, for the
 * direct ones, the used length (§6.4).
 */
static u64 vaccel_output_len(const struct vaccel_request *req, bool direct)
{
	u64 total = 0;
	unsigned int i;

	for (i = req->num_in; i < req->num_in + req->num_out; i++)
		if (!direct || req->bufs[i].handle == VIRTIO_ACCEL_DIRECT_HANDLE)
			total += req->bufs[i].len;
	return total;
}

/*
 * Decodes a returned chain's response; the device is not trusted (§12.9).
 * Returns false if the device returned the chain out of step with the
 * driver: with a used length this chain cannot have (the driver's chains
 * always have room for the response, §6.4), or with another chain's fence
 * (the device was reset behind the driver's back, §11.1). Such a device
 * may not be done with the chain: see vaccel_park().
 */
static bool vaccel_finish(struct vaccel_queue *q, struct vaccel_request *req,
			  unsigned int used_len)
{
	struct virtio_accel_resp *resp = req->resp;
	struct device *dev = &q->dev->vdev->dev;
	bool in_step = true;

	if (used_len < sizeof(*resp) ||
	    used_len - sizeof(*resp) > vaccel_output_len(req, true)) {
		dev_err_ratelimited(dev, "%s: used length %u\n", q->name,
				    used_len);
		in_step = false;
	} else if (le64_to_cpu(resp->fence.seqno) !=
		   le64_to_cpu(req->fence.seqno) ||
		   le16_to_cpu(resp->fence.queue) != q->index) {
		dev_err_ratelimited(dev, "%s: fence %llu reported as %u:%llu\n",
				    q->name, le64_to_cpu(req->fence.seqno),
				    le16_to_cpu(resp->fence.queue),
				    le64_to_cpu(resp->fence.seqno));
		in_step = false;
	} else if (le64_to_cpu(resp->bytes_written) >
		   vaccel_output_len(req, false)) {
		dev_err_ratelimited(dev, "%s: %llu bytes written of %llu\n",
				    q->name, le64_to_cpu(resp->bytes_written),
				    vaccel_output_len(req, false));
		resp->status = cpu_to_le32(VIRTIO_ACCEL_S_DEVICE_ERROR);
	}
	if (!in_step)
		resp->status = cpu_to_le32(VIRTIO_ACCEL_S_DEVICE_ERROR);
	req->error = vaccel_status_errno(le32_to_cpu(resp->status));
	return in_step;
}

/*
 * Keeps a request that the device returned out of step (vaccel_finish())
 * from its owner until the device is reset: such a device may still write
 * the chain, and the ring has taken its descriptors back already. Nothing
 * more goes into a ring of the device (@halted; on this queue strictly, as
 * under q->lock) until vaccel_stop() resets it and fails the request. A
 * stopping device is being reset already. Under q->lock.
 */
static void vaccel_park(struct vaccel_queue *q, struct vaccel_request *req)
{
	struct vaccel_device *dev = q->dev;

	list_move_tail(&req->node, &q->parked);
	WRITE_ONCE(dev->halted, true);
	if (dev->state != VACCEL_STOPPED)
		vaccel_schedule_reset(dev);
}

/*
 * Hands requests back to their owners; @error overrides the device's, and
 * then so does DeviceError whatever the device wrote before its reset.
 */
static void vaccel_complete_list(struct list_head *done, int error)
{
	struct vaccel_request *req, *next;

	list_for_each_entry_safe(req, next, done, node) {
		list_del_init(&req->node);
		if (error)
			req->error = error;
		if (req->error && req->resp &&
		    (error ||
		     req->resp->status == cpu_to_le32(VIRTIO_ACCEL_S_OK)))
			req->resp->status =
				cpu_to_le32(VIRTIO_ACCEL_S_DEVICE_ERROR);
		req->done(req);
	}
}

static void vaccel_done_work(struct work_struct *work)
{
	struct vaccel_queue *q = container_of(work, struct vaccel_queue,
					      done_work);
	struct vaccel_request *req;
	unsigned int used_len;
	LIST_HEAD(done);

	spin_lock_irq(&q->lock);
	if (!q->vq) {
		spin_unlock_irq(&q->lock);
		return;
	}
	do {
		virtqueue_disable_cb(q->vq);
		while ((req = virtqueue_get_buf(q->vq, &used_len))) {
			q->last_progress = jiffies;
			if (vaccel_finish(q, req, used_len))
				list_move_tail(&req->node, &done);
			else
				vaccel_park(q, req);
		}
	} while (!virtqueue_enable_cb(q->vq));
	if ((q->dev->state == VACCEL_LIVE || q->dev->state == VACCEL_DRAINING) &&
	    !READ_ONCE(q->dev->halted) && vaccel_queue_refill(q, &done))
		virtqueue_kick(q->vq);
	spin_unlock_irq(&q->lock);
	vaccel_complete_list(&done, 0);
}

static void vaccel_request_done(struct virtqueue *vq)
{
	struct vaccel_device *dev = vq->vdev->priv;

	queue_work(system_bh_wq, &dev->queues[vq->index - 1].done_work);
}

/* ---- Control commands (§7) ---- */

static void vaccel_control_done(struct virtqueue *vq)
{
	struct vaccel_device *dev = vq->vdev->priv;
	struct vaccel_ctrl *ctrl;
	unsigned int used_len;
	unsigned long flags;

	spin_lock_irqsave(&dev->ctrl_lock, flags);
	while ((ctrl = virtqueue_get_buf(vq, &used_len))) {
		if (used_len < sizeof(ctrl->resp))
			ctrl->error = -EIO;
		else
			ctrl->error = vaccel_status_errno(le32_to_cpu(ctrl->resp.status));
		if (ctrl == dev->ctrl_pending)
			dev->ctrl_pending = NULL;
		complete(&ctrl->done);
	}
	spin_unlock_irqrestore(&dev->ctrl_lock, flags);
}

/*
 * A live device's command completes or is failed by the watchdog's reset.
 * While the device starts (state_mutex held by the starter) there is no
 * watchdog: a device that does not answer is reset here, which makes it
 * let go of the command's buffers (§11), and starting fails. The command
 * leaves the ring only then, answered meanwhile or not, so that the caller
 * frees a buffer that neither the device nor the ring holds.
 */
static int vaccel_control_wait(struct vaccel_device *dev, bool starting,
			       struct vaccel_ctrl *ctrl)
{
	struct vaccel_ctrl *held;

	if (!starting) {
		wait_for_completion(&ctrl->done);
		return ctrl->error;
	}
	if (wait_for_completion_timeout(&ctrl->done, timeout_secs * HZ))
		return ctrl->error;
	dev_err(vaccel_dev(dev), "no answer to a control command in %u s\n",
		timeout_secs);
	virtio_reset_device(dev->vdev);
	spin_lock_irq(&dev->ctrl_lock);
	while ((held = virtqueue_detach_unused_buf(dev->ctrl_vq))) {
		held->error = -ETIMEDOUT;
		complete(&held->done);
	}
	dev->ctrl_pending = NULL;
	spin_unlock_irq(&dev->ctrl_lock);
	return -ETIMEDOUT;
}

/*
 * Sends a command and waits for its completion. Only the starter (which
 * holds state_mutex) may send while the device starts (@starting).
 */
static int vaccel_control(struct vaccel_device *dev, bool starting, u32 cmd,
			  u64 arg, const void *entries, unsigned int count,
			  u64 *value)
{
	size_t entries_size = count * (size_t)16;
	struct scatterlist out, in, *lists[2] = { &out, &in };
	struct vaccel_ctrl *ctrl;
	int err;

	ctrl = kzalloc(struct_size(ctrl, entries, entries_size), GFP_KERNEL);
	if (!ctrl)
		return -ENOMEM;
	ctrl->req.cmd = cpu_to_le32(cmd);
	ctrl->req.count = cpu_to_le32(count);
	ctrl->req.arg = cpu_to_le64(arg);
	memcpy(ctrl->entries, entries, entries_size);
	init_completion(&ctrl->done);
	sg_init_one(&out, &ctrl->req, sizeof(ctrl->req) + entries_size);
	sg_init_one(&in, &ctrl->resp, sizeof(ctrl->resp));

	mutex_lock(&dev->ctrl_mutex);
	spin_lock_irq(&dev->ctrl_lock);
	if (dev->state != (starting ? VACCEL_STARTING : VACCEL_LIVE) ||
	    READ_ONCE(dev->halted)) {
		err = dev->removed ? -ENODEV : -EAGAIN;
	} else {
		err = virtqueue_add_sgs(dev->ctrl_vq, lists, 1, 1, ctrl,
					GFP_ATOMIC);
		if (!err) {
			dev->ctrl_pending = ctrl;
			dev->ctrl_submitted = jiffies;
			virtqueue_kick(dev->ctrl_vq);
		}
	}
	spin_unlock_irq(&dev->ctrl_lock);
	if (!err)
		err = vaccel_control_wait(dev, starting, ctrl);
	if (!err && value)
		*value = le64_to_cpu(ctrl->resp.value);
	mutex_unlock(&dev->ctrl_mutex);
	kfree(ctrl);
	return err;
}

int vaccel_object_create(struct vaccel_device *dev,
			 const struct virtio_accel_mem_seg *segs,
			 unsigned int count, u32 *handle)
{
	u64 value;
	int err;

	if (!count || count > dev->info.max_segments)
		return -EINVAL;
	err = vaccel_control(dev, false, VIRTIO_ACCEL_CMD_OBJECT_CREATE, 0,
			     segs, count, &value);
	if (err)
		return err;
	/* §7.1.2: a handle is between 1 and 0xffffffff. */
	if (!value || value > U32_MAX) {
		dev_err_ratelimited(vaccel_dev(dev), "object handle %llu\n",
				    value);
		return -EIO;
	}
	*handle = value;
	return 0;
}
EXPORT_SYMBOL_GPL(vaccel_object_create);

int vaccel_object_destroy(struct vaccel_device *dev, u32 handle)
{
	return vaccel_control(dev, false, VIRTIO_ACCEL_CMD_OBJECT_DESTROY,
			      handle, NULL, 0, NULL);
}
EXPORT_SYMBOL_GPL(vaccel_object_destroy);

int vaccel_fence_query(struct vaccel_device *dev,
		       const struct virtio_accel_fence *fence, bool *signalled)
{
	u64 value;
	int err;

	err = vaccel_control(dev, false, VIRTIO_ACCEL_CMD_FENCE_QUERY, 0, fence,
			     1, &value);
	if (!err)
		*signalled = value != 0;
	return err;
}
EXPORT_SYMBOL_GPL(vaccel_fence_query);

/* §3, §7.5: the capabilities negotiated, plus those CAPABILITIES enables. */
static int vaccel_enable_capabilities(struct vaccel_device *dev)
{
	struct virtio_device *vdev = dev->vdev;
	u64 caps = 0, enabled;
	int err;

	if (virtio_has_feature(vdev, VIRTIO_ACCEL_F_OBJECTS))
		caps |= BIT_ULL(VIRTIO_ACCEL_F_OBJECTS);
	if (virtio_has_feature(vdev, VIRTIO_ACCEL_F_FENCES))
		caps |= BIT_ULL(VIRTIO_ACCEL_F_FENCES);
	dev->info.capabilities = caps;
	if (caps == VACCEL_KNOWN_CAPS)
		return 0;
	err = vaccel_control(dev, true, VIRTIO_ACCEL_CMD_CAPABILITIES,
			     VACCEL_KNOWN_CAPS, NULL, 0, &enabled);
	if (err == -EOPNOTSUPP)	/* a first-revision device (§7.5) */
		return 0;
	if (err)
		return err;
	dev->info.capabilities = caps | (enabled & VACCEL_KNOWN_CAPS);
	return 0;
}

/* ---- Configuration (§5) ---- */

#define vaccel_cread(vdev, field, ptr) \
	virtio_cread_le(vdev, struct virtio_accel_config, field, ptr)

static int vaccel_read_config(struct vaccel_device *dev)
{
	struct virtio_device *vdev = dev->vdev;
	struct vaccel_info *info = &dev->info;
	u32 queues;

	vaccel_cread(vdev, num_request_queues, &queues);
	vaccel_cread(vdev, ops, &info->ops);
	vaccel_cread(vdev, max_segments, &info->max_segments);
	vaccel_cread(vdev, max_deps, &info->max_deps);
	vaccel_cread(vdev, max_objects, &info->max_objects);
	vaccel_cread(vdev, max_inflight, &info->max_inflight);
	vaccel_cread(vdev, max_object_size, &info->max_object_size);
	vaccel_cread(vdev, max_buffer_size, &info->max_buffer_size);
	/* §5.2 */
	if (!queues || queues > VIRTIO_ACCEL_MAX_REQUEST_QUEUES ||
	    (info->ops & ~VACCEL_KNOWN_OPS) || info->max_segments < 2 ||
	    !info->max_inflight || !info->max_buffer_size) {
		dev_err(&vdev->dev,
			"invalid configuration: %u queues, ops %#x, %u segments, %u in flight, buffers of %llu bytes\n",
			queues, info->ops, info->max_segments,
			info->max_inflight, info->max_buffer_size);
		return -EINVAL;
	}
	info->num_request_queues = min(queues, nr_cpu_ids);
	return 0;
}

/* §5.2: the limits that come with each capability. */
static int vaccel_check_capabilities(struct vaccel_device *dev)
{
	const struct vaccel_info *info = &dev->info;

	if ((info->capabilities & BIT_ULL(VIRTIO_ACCEL_F_FENCES)) &&
	    !info->max_deps)
		goto invalid;
	if ((info->capabilities & BIT_ULL(VIRTIO_ACCEL_F_OBJECTS)) &&
	    (!info->max_objects || !info->max_object_size))
		goto invalid;
	return 0;
invalid:
	dev_err(vaccel_dev(dev),
		"invalid configuration: capabilities %#llx with %u deps, %u objects of %llu bytes\n",
		info->capabilities, info->max_deps, info->max_objects,
		info->max_object_size);
	return -EINVAL;
}

/* ---- Start, stop, recovery ---- */

static void vaccel_set_state(struct vaccel_device *dev, enum vaccel_state state)
{
	unsigned int i;

	spin_lock_irq(&dev->ctrl_lock);
	dev->state = state;
	spin_unlock_irq(&dev->ctrl_lock);
	for (i = 0; i < dev->info.num_request_queues; i++) {
		spin_lock_irq(&dev->queues[i].lock);
		dev->state = state;
		spin_unlock_irq(&dev->queues[i].lock);
	}
}

static int vaccel_find_vqs(struct vaccel_device *dev)
{
	unsigned int i, nvqs = dev->info.num_request_queues + 1;
	/* The request queues' vectors are spread over the CPUs. */
	struct irq_affinity affinity = { .pre_vectors = 1 };
	struct virtqueue_info *vqs_info;
	struct virtqueue **vqs;
	int err = -ENOMEM;

	vqs_info = kcalloc(nvqs, sizeof(*vqs_info), GFP_KERNEL);
	vqs = kcalloc(nvqs, sizeof(*vqs), GFP_KERNEL);
	if (!vqs_info || !vqs)
		goto out;
	vqs_info[0].name = "control";
	vqs_info[0].callback = vaccel_control_done;
	for (i = 1; i < nvqs; i++) {
		vqs_info[i].name = dev->queues[i - 1].name;
		vqs_info[i].callback = vaccel_request_done;
	}
	err = virtio_find_vqs(dev->vdev, nvqs, vqs, vqs_info, &affinity);
	if (err)
		goto out;
	dev->ctrl_vq = vqs[0];
	for (i = 1; i < nvqs; i++) {
		struct vaccel_queue *q = &dev->queues[i - 1];

		spin_lock_irq(&q->lock);
		q->vq = vqs[i];
		q->next_seqno = 1;	/* §6.2, §11 */
		spin_unlock_irq(&q->lock);
	}
out:
	kfree(vqs);
	kfree(vqs_info);
	return err;
}

/*
 * Without indirect descriptors a chain must fit in the ring itself: the
 * virtio core warns about a longer one (§6.5 counts the descriptors).
 */
static void vaccel_set_ring_limit(struct vaccel_device *dev)
{
	unsigned int i, limit = UINT_MAX;

	if (!virtio_has_feature(dev->vdev, VIRTIO_RING_F_INDIRECT_DESC))
		for (i = 0; i < dev->info.num_request_queues; i++)
			limit = min(limit,
				    virtqueue_get_vring_size(dev->queues[i].vq));
	WRITE_ONCE(dev->ring_limit, limit);
}

/*
 * Deletes the virtqueues of a reset device; a completion work that a late
 * interrupt queued finds no virtqueue.
 */
static void vaccel_forget_vqs(struct vaccel_device *dev)
{
	unsigned int i;

	for (i = 0; i < dev->info.num_request_queues; i++) {
		spin_lock_irq(&dev->queues[i].lock);
		dev->queues[i].vq = NULL;
		spin_unlock_irq(&dev->queues[i].lock);
	}
	dev->vdev->config->del_vqs(dev->vdev);
	for (i = 0; i < dev->info.num_request_queues; i++)
		flush_work(&dev->queues[i].done_work);
	dev->ctrl_vq = NULL;
}

/* Sets DRIVER_OK and enables the capabilities (§5.3 steps 4 and 5). */
static int vaccel_start(struct vaccel_device *dev)
{
	int err;

	err = vaccel_find_vqs(dev);
	if (err)
		return err;
	vaccel_set_ring_limit(dev);
	vaccel_set_state(dev, VACCEL_STARTING);
	virtio_device_ready(dev->vdev);
	err = vaccel_enable_capabilities(dev);
	if (!err)
		err = vaccel_check_capabilities(dev);
	if (err) {
		virtio_reset_device(dev->vdev);
		vaccel_set_state(dev, VACCEL_STOPPED);
		vaccel_forget_vqs(dev);
		return err;
	}
	vaccel_set_state(dev, VACCEL_LIVE);
	if (!dev->removed)
		schedule_delayed_work(&dev->watchdog, HZ);
	return 0;
}

#ifdef CONFIG_PM_SLEEP
static unsigned long vaccel_inflight_count(struct vaccel_device *dev)
{
	unsigned long count = 0;
	struct vaccel_request *req;
	unsigned int i;

	for (i = 0; i < dev->info.num_request_queues; i++) {
		struct vaccel_queue *q = &dev->queues[i];

		spin_lock_irq(&q->lock);
		list_for_each_entry(req, &q->inflight, node)
			count++;
		list_for_each_entry(req, &q->backlog, node)
			count++;
		spin_unlock_irq(&q->lock);
	}
	return count;
}
#endif

/*
 * Resets the device and fails, with @error, every request and command it
 * still holds, those parked by vaccel_park() included: after
 * virtio_reset_device() it touches no buffer (§11). Completions that
 * reached the used rings before the reset count. The device is in step
 * with the driver again (@halted).
 */
static void vaccel_stop(struct vaccel_device *dev, int error)
{
	struct vaccel_request *req;
	struct vaccel_ctrl *ctrl;
	unsigned int i;
	LIST_HEAD(failed);

	vaccel_set_state(dev, VACCEL_STOPPED);
	cancel_delayed_work_sync(&dev->watchdog);
	virtio_reset_device(dev->vdev);
	for (i = 0; i < dev->info.num_request_queues; i++) {
		struct vaccel_queue *q = &dev->queues[i];

		flush_work(&q->done_work);
		/* Users complete with BH disabled, as from the device. */
		local_bh_disable();
		vaccel_done_work(&q->done_work);
		local_bh_enable();
		spin_lock_irq(&q->lock);
		while ((req = virtqueue_detach_unused_buf(q->vq)))
			list_move_tail(&req->node, &failed);
		list_splice_tail_init(&q->parked, &failed);
		list_splice_tail_init(&q->backlog, &failed);
		spin_unlock_irq(&q->lock);
	}
	spin_lock_irq(&dev->ctrl_lock);
	while ((ctrl = virtqueue_detach_unused_buf(dev->ctrl_vq))) {
		ctrl->error = error;
		complete(&ctrl->done);
	}
	dev->ctrl_pending = NULL;
	spin_unlock_irq(&dev->ctrl_lock);
	local_bh_disable();
	vaccel_complete_list(&failed, error);
	local_bh_enable();
	WRITE_ONCE(dev->halted, false);
	vaccel_forget_vqs(dev);
}

static void vaccel_notify_reset(struct vaccel_device *dev)
{
	struct vaccel_client *client;

	mutex_lock(&vaccel_lock);
	/* Not for a device already taken from its clients by remove. */
	if (!list_empty(&dev->node))
		list_for_each_entry(client, &vaccel_clients, node)
			if (client->reset)
				client->reset(dev);
	mutex_unlock(&vaccel_lock);
}

#ifdef CONFIG_PM_SLEEP
/* Tries to start a device whose restart failed again, later and later. */
static void vaccel_schedule_restart(struct vaccel_device *dev)
{
	dev->restart_delay = clamp(dev->restart_delay * 2, 1U, 60U);
	if (!READ_ONCE(dev->removed))
		queue_delayed_work(system_freezable_wq, &dev->restart_work,
				   dev->restart_delay * HZ);
}

static void vaccel_restart_work(struct work_struct *work)
{
	struct vaccel_device *dev = container_of(to_delayed_work(work),
						 struct vaccel_device,
						 restart_work);
	bool stopped;
	int err;

	mutex_lock(&dev->state_mutex);
	stopped = !dev->removed && dev->state == VACCEL_STOPPED;
	mutex_unlock(&dev->state_mutex);
	if (!stopped)
		return;
	err = virtio_device_restore(dev->vdev);
	if (err) {
		vaccel_schedule_restart(dev);
		return;
	}
	dev->restart_delay = 0;
	dev_info(vaccel_dev(dev), "the device runs again\n");
}
#endif

static bool vaccel_expired(unsigned long since)
{
	return time_after(jiffies, since + timeout_secs * HZ);
}

/*
 * Whether a queue with requests in flight completed none for too long, or
 * the command in flight waited too long. Requests waiting in the ring
 * behind max_inflight (§10) or on dependencies do not count by themselves.
 */
static bool vaccel_stalled(struct vaccel_device *dev)
{
	bool stalled = false;
	unsigned int i;

	spin_lock_irq(&dev->ctrl_lock);
	stalled = dev->ctrl_pending && vaccel_expired(dev->ctrl_submitted);
	spin_unlock_irq(&dev->ctrl_lock);
	for (i = 0; i < dev->info.num_request_queues && !stalled; i++) {
		struct vaccel_queue *q = &dev->queues[i];

		spin_lock_irq(&q->lock);
		stalled = !list_empty(&q->inflight) &&
			  vaccel_expired(q->last_progress);
		spin_unlock_irq(&q->lock);
	}
	return stalled;
}

/*
 * Why the device must be reset now (§11.1), or 0: -EIO if it returned a
 * request out of step with the driver (@halted), -ETIMEDOUT if it left a
 * request or a command unanswered for too long.
 */
static int vaccel_reset_cause(struct vaccel_device *dev)
{
	if (READ_ONCE(dev->halted))
		return -EIO;
	return vaccel_stalled(dev) ? -ETIMEDOUT : 0;
}

/*
 * Resets the device and starts it again (§11.1), failing what it held, if
 * it still has a cause to. One asked for before the device stopped for
 * another reason finds none: a reset queued during a suspend runs after
 * the resume (system_freezable_wq), when the device that vaccel_freeze()
 * stopped is live again; one asked for during a reset runs after it.
 */
static void vaccel_reset_work(struct work_struct *work)
{
	struct vaccel_device *dev = container_of(work, struct vaccel_device,
						 reset_work);
	int error;
	int err = 0;

	mutex_lock(&dev->state_mutex);
	if (dev->removed || dev->state != VACCEL_LIVE) {
		mutex_unlock(&dev->state_mutex);
		return;
	}
	error = vaccel_reset_cause(dev);
	if (!error) {
		/* The watchdog may have stopped to ask for this reset. */
		schedule_delayed_work(&dev->watchdog, HZ);
		mutex_unlock(&dev->state_mutex);
		return;
	}
	if (error == -ETIMEDOUT)
		dev_warn(vaccel_dev(dev),
			 "the device left a request unanswered for %u s: resetting it\n",
			 timeout_secs);
	else
		dev_warn(vaccel_dev(dev),
			 "the device returned a request out of step with the driver: resetting it\n");
	dev->stop_error = error;
	mutex_unlock(&dev->state_mutex);
#ifdef CONFIG_PM_SLEEP
	/* The virtio core's own reset and restart, as for suspend and resume. */
	err = virtio_device_freeze(dev->vdev);
	if (!err)
		err = virtio_device_restore(dev->vdev);
	if (err) {
		dev_err(vaccel_dev(dev),
			"cannot restart the device (%d): trying again later\n",
			err);
		vaccel_schedule_restart(dev);
	}
#else
	/* Without the virtio core's restore the device stays stopped. */
	mutex_lock(&dev->state_mutex);
	vaccel_stop(dev, error);
	mutex_unlock(&dev->state_mutex);
	vaccel_notify_reset(dev);
	dev_err(vaccel_dev(dev), "cannot restart the device without CONFIG_PM_SLEEP\n");
#endif
}

/*
 * Runs every second while the device is live (vaccel_start()) and stops
 * once it has queued a reset: that reset stops and starts the device,
 * which arms it again, or finds no cause and arms it again itself. While a
 * cause holds and a reset is queued already it looks again a second later.
 * Its re-arming does not defeat vaccel_stop() and vaccel_remove():
 * cancel_delayed_work_sync() refuses to queue it while it waits for it,
 * and nothing else arms it while the device is stopped or removed.
 */
static void vaccel_watchdog(struct work_struct *work)
{
	struct vaccel_device *dev = container_of(to_delayed_work(work),
						 struct vaccel_device,
						 watchdog);

	if (!vaccel_reset_cause(dev) || !vaccel_schedule_reset(dev))
		schedule_delayed_work(&dev->watchdog, HZ);
}

/* ---- Devices and clients ---- */

static void vaccel_release(struct kref *ref)
{
	struct vaccel_device *dev = container_of(ref, struct vaccel_device, ref);

	put_device(&dev->vdev->dev);
	kfree(dev->queues);
	kfree(dev);
}

void vaccel_put_device(struct vaccel_device *dev)
{
	if (dev)
		kref_put(&dev->ref, vaccel_release);
}
EXPORT_SYMBOL_GPL(vaccel_put_device);

struct vaccel_device *vaccel_get_device(u32 op)
{
	struct vaccel_device *dev, *found = NULL;
	unsigned int count = 0, pick;

	mutex_lock(&vaccel_lock);
	list_for_each_entry(dev, &vaccel_devices, node)
		count += vaccel_has_op(dev, op);
	/* Round robin over the devices that have @op. */
	pick = count ? vaccel_next_device++ % count : 0;
	list_for_each_entry(dev, &vaccel_devices, node) {
		if (!vaccel_has_op(dev, op))
			continue;
		if (!pick--) {
			found = dev;
			break;
		}
	}
	if (found)
		kref_get(&found->ref);
	mutex_unlock(&vaccel_lock);
	return found;
}
EXPORT_SYMBOL_GPL(vaccel_get_device);

void *vaccel_client_data(struct vaccel_device *dev, struct vaccel_client *client)
{
	return dev->client_data[client->slot];
}

void vaccel_set_client_data(struct vaccel_device *dev,
			    struct vaccel_client *client, void *data)
{
	dev->client_data[client->slot] = data;
}

int vaccel_register_client(struct vaccel_client *client)
{
	struct vaccel_device *dev;
	int err = 0;

	mutex_lock(&vaccel_lock);
	client->slot = find_first_zero_bit(&vaccel_client_slots,
					   VACCEL_MAX_CLIENTS);
	if (client->slot >= VACCEL_MAX_CLIENTS) {
		err = -ENOSPC;
		goto out;
	}
	list_for_each_entry(dev, &vaccel_devices, node) {
		err = client->add(dev);
		if (err) {
			dev_err(vaccel_dev(dev), "cannot add %ps: %d\n",
				client->add, err);
			err = 0;
		}
	}
	set_bit(client->slot, &vaccel_client_slots);
	list_add_tail(&client->node, &vaccel_clients);
out:
	mutex_unlock(&vaccel_lock);
	return err;
}

void vaccel_unregister_client(struct vaccel_client *client)
{
	struct vaccel_device *dev;

	mutex_lock(&vaccel_lock);
	list_del(&client->node);
	list_for_each_entry(dev, &vaccel_devices, node)
		client->remove(dev);
	clear_bit(client->slot, &vaccel_client_slots);
	mutex_unlock(&vaccel_lock);
}

static void vaccel_add_to_clients(struct vaccel_device *dev)
{
	struct vaccel_client *client;
	int err;

	mutex_lock(&vaccel_lock);
	list_add_tail(&dev->node, &vaccel_devices);
	list_for_each_entry(client, &vaccel_clients, node) {
		err = client->add(dev);
		if (err)
			dev_err(vaccel_dev(dev), "cannot add %ps: %d\n",
				client->add, err);
	}
	mutex_unlock(&vaccel_lock);
}

static void vaccel_remove_from_clients(struct vaccel_device *dev)
{
	struct vaccel_client *client;

	mutex_lock(&vaccel_lock);
	list_del_init(&dev->node);
	list_for_each_entry_reverse(client, &vaccel_clients, node)
		client->remove(dev);
	mutex_unlock(&vaccel_lock);
}

static struct vaccel_device *vaccel_alloc(struct virtio_device *vdev)
{
	struct vaccel_device *dev = kzalloc(sizeof(*dev), GFP_KERNEL);
	unsigned int i;
	int err = -ENOMEM;

	if (!dev)
		return ERR_PTR(-ENOMEM);
	dev->vdev = vdev;
	kref_init(&dev->ref);
	INIT_LIST_HEAD(&dev->node);
	spin_lock_init(&dev->ctrl_lock);
	mutex_init(&dev->ctrl_mutex);
	mutex_init(&dev->state_mutex);
	INIT_DELAYED_WORK(&dev->watchdog, vaccel_watchdog);
	INIT_WORK(&dev->reset_work, vaccel_reset_work);
#ifdef CONFIG_PM_SLEEP
	INIT_DELAYED_WORK(&dev->restart_work, vaccel_restart_work);
#endif
	err = vaccel_read_config(dev);
	if (err)
		goto fail;
	err = -ENOMEM;
	dev->queues = kcalloc(dev->info.num_request_queues,
			      sizeof(*dev->queues), GFP_KERNEL);
	if (!dev->queues)
		goto fail;
	for (i = 0; i < dev->info.num_request_queues; i++) {
		struct vaccel_queue *q = &dev->queues[i];

		q->dev = dev;
		q->index = i;
		spin_lock_init(&q->lock);
		INIT_LIST_HEAD(&q->inflight);
		INIT_LIST_HEAD(&q->backlog);
		INIT_LIST_HEAD(&q->parked);
		INIT_WORK(&q->done_work, vaccel_done_work);
		snprintf(q->name, sizeof(q->name), "request.%u", i);
	}
	/* vaccel_dev() stays valid while clients hold the device. */
	get_device(&vdev->dev);
	return dev;
fail:
	kfree(dev);
	return ERR_PTR(err);
}

static int vaccel_probe(struct virtio_device *vdev)
{
	struct vaccel_device *dev;
	int err;

	if (!virtio_has_feature(vdev, VIRTIO_F_VERSION_1))
		return -ENODEV;	/* §3.1: the device has no legacy interface */
	dev = vaccel_alloc(vdev);
	if (IS_ERR(dev))
		return PTR_ERR(dev);
	vdev->priv = dev;
	mutex_lock(&dev->state_mutex);
	err = vaccel_start(dev);
	mutex_unlock(&dev->state_mutex);
	if (err) {
		vdev->priv = NULL;
		vaccel_put_device(dev);
		return err;
	}
	dev_info(&vdev->dev,
		 "%u request queues, operations %#x, capabilities %#llx\n",
		 dev->info.num_request_queues, dev->info.ops,
		 dev->info.capabilities);
	vaccel_add_to_clients(dev);
	return 0;
}

static void vaccel_remove(struct virtio_device *vdev)
{
	struct vaccel_device *dev = vdev->priv;

	vaccel_remove_from_clients(dev);
	mutex_lock(&dev->state_mutex);
	WRITE_ONCE(dev->removed, true);
	mutex_unlock(&dev->state_mutex);
	/* The watchdog first: it queues resets; no work re-arms it now. */
	cancel_delayed_work_sync(&dev->watchdog);
	cancel_work_sync(&dev->reset_work);
#ifdef CONFIG_PM_SLEEP
	cancel_delayed_work_sync(&dev->restart_work);
#endif
	mutex_lock(&dev->state_mutex);
	if (dev->state != VACCEL_STOPPED)
		vaccel_stop(dev, -ENODEV);
	else	/* a failed restart may have left it running (FAILED) */
		virtio_reset_device(vdev);
	mutex_unlock(&dev->state_mutex);
	/* A completion may have asked for a reset until the device stopped. */
	cancel_work_sync(&dev->reset_work);
	vdev->priv = NULL;
	vaccel_put_device(dev);
}

#ifdef CONFIG_PM_SLEEP
/*
 * Suspend lets the requests it holds (in flight and backlogged) finish, up
 * to the timeout, before the device stops, and takes no new ones meanwhile:
 * vaccel_submit() refuses them with -EAGAIN (the crypto providers compute
 * them in software). A watchdog reset (stop_error set) does not wait, nor
 * does a halted device (vaccel_park()): it refills no ring.
 */
static int vaccel_freeze(struct virtio_device *vdev)
{
	struct vaccel_device *dev = vdev->priv;
	unsigned long deadline = jiffies + timeout_secs * HZ;
	int error;

	mutex_lock(&dev->state_mutex);
	error = dev->stop_error;
	dev->stop_error = 0;
	if (!error && dev->state == VACCEL_LIVE)
		vaccel_set_state(dev, VACCEL_DRAINING);
	mutex_unlock(&dev->state_mutex);
	if (!error) {
		while (vaccel_inflight_count(dev) && !READ_ONCE(dev->halted) &&
		       time_before(jiffies, deadline))
			msleep(20);
		error = -EIO;
	}
	mutex_lock(&dev->state_mutex);
	if (dev->state != VACCEL_STOPPED)
		vaccel_stop(dev, error);
	mutex_unlock(&dev->state_mutex);
	/* Before the device runs again: old handles must not reach it. */
	vaccel_notify_reset(dev);
	return 0;
}

/* Resume, and the second half of a watchdog reset. */
static int vaccel_restore(struct virtio_device *vdev)
{
	struct vaccel_device *dev = vdev->priv;
	int err = 0;

	mutex_lock(&dev->state_mutex);
	if (dev->state == VACCEL_STOPPED)
		err = vaccel_start(dev);
	mutex_unlock(&dev->state_mutex);
	return err;
}
#endif

static const struct virtio_device_id vaccel_id_table[] = {
	{ VIRTIO_ID_ACCEL, VIRTIO_DEV_ANY_ID },
	{ 0 },
};
MODULE_DEVICE_TABLE(virtio, vaccel_id_table);

static const unsigned int vaccel_features[] = {
	VIRTIO_ACCEL_F_OBJECTS,
	VIRTIO_ACCEL_F_FENCES,
};

static struct virtio_driver vaccel_driver = {
	.driver.name = KBUILD_MODNAME,
	.feature_table = vaccel_features,
	.feature_table_size = ARRAY_SIZE(vaccel_features),
	.id_table = vaccel_id_table,
	.probe = vaccel_probe,
	.remove = vaccel_remove,
#ifdef CONFIG_PM_SLEEP
	.freeze = vaccel_freeze,
	.restore = vaccel_restore,
#endif
};

static int __init vaccel_init(void)
{
	int err;

	err = register_virtio_driver(&vaccel_driver);
	if (err)
		return err;
	err = vaccel_crypto_init();
	if (err)
		goto unregister_driver;
	err = vaccel_drm_init();
	if (err)
		goto exit_crypto;
	return 0;
exit_crypto:
	vaccel_crypto_exit();
unregister_driver:
	unregister_virtio_driver(&vaccel_driver);
	return err;
}

static void __exit vaccel_exit(void)
{
	vaccel_drm_exit();
	vaccel_crypto_exit();
	unregister_virtio_driver(&vaccel_driver);
}

module_init(vaccel_init);
module_exit(vaccel_exit);

MODULE_DESCRIPTION("Driver of the virtio accelerator device");
MODULE_AUTHOR("The vhost-user-accel authors");
MODULE_LICENSE("Dual MIT/GPL");
