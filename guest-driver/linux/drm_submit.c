// SPDX-License-Identifier: GPL-2.0 OR MIT
/*
 * virtio_accel: jobs of the accel device node, one request (spec §6) each.
 *
 * The life of a job:
 * 1. SUBMIT takes a reference on the GEM object of each buffer, registers
 *    it as a device object or maps its pages as a direct buffer, pins the
 *    user memory of the others (FOLL_LONGTERM: a job may wait on foreign
 *    fences for long), collects the fences of its in-syncobjs and
 *    in-sync_file (unwrapping arrays and chains), sizes the array of CPU
 *    waits for the worst case and creates its out-fence.
 * 2. An in-fence of another job of this device whose request is in a ring
 *    (its device fence known) becomes a dependency of the request (§6.2);
 *    every other pending in-fence is waited for on the CPU first, by a
 *    callback on it: the last one to signal queues the submission.
 * 3. Submission (process context, under reset_lock): the request goes on
 *    the queue of its first dependency, so that it can name it (§6.2);
 *    dependencies on other queues are named once FENCE_QUERY says they were
 *    issued, and waited for on the CPU otherwise. Object buffers get their
 *    device handles, or become direct buffers (drm_gem.c).
 *    Submission from the SUBMIT ioctl runs before the out-fence is
 *    published. Deferred submission (the work item after CPU waits) runs
 *    after it, on the fence-signalling path: it must not allocate with
 *    reclaim or wait on anything reclaim may wait on (reclaim may wait on
 *    the out-fence). So it allocates with GFP_NOWAIT (failing the job with
 *    -ENOMEM), sends no control command (a dependency on another queue is
 *    waited for on the CPU instead of FENCE_QUERY; an object that lost its
 *    registration in a reset is passed directly, an imported one fails the
 *    job with -EAGAIN), and does not sleep on reset_lock (a reset in
 *    progress fails the job with -EAGAIN).
 * 4. The core's done callback (BH context) writes the result record and
 *    signals the out-fence; a work item then drops what the job held, its
 *    parameters (AES keys) wiped.
 */
#include <linux/dma-fence.h>
#include <linux/dma-fence-unwrap.h>
#include <linux/file.h>
#include <linux/highmem.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/overflow.h>
#include <linux/rcupdate.h>
#include <linux/scatterlist.h>
#include <linux/slab.h>
#include <linux/sync_file.h>
#include <linux/uaccess.h>
#include <linux/wait_bit.h>
#include <linux/workqueue.h>
#include <drm/drm_drv.h>
#include <drm/drm_file.h>
#include <drm/drm_gem.h>
#include <drm/drm_syncobj.h>
#include <drm/virtio_accel_drm.h>

#include "vaccel_drm.h"

/* Jobs of one open file that may be unfinished at a time. */
#define VACCEL_MAX_FILE_JOBS	1024
/* Fences one job waits for on the CPU. */
#define VACCEL_MAX_WAITS	256

static_assert(sizeof(struct drm_vaccel_info) == 48);
static_assert(sizeof(struct drm_vaccel_gem_create) == 16);
static_assert(sizeof(struct drm_vaccel_gem_info) == 24);
static_assert(sizeof(struct drm_vaccel_buffer) == 32);
static_assert(sizeof(struct drm_vaccel_submit) == 136);
static_assert(sizeof(struct drm_vaccel_result) == 64);
static_assert(sizeof_field(struct drm_vaccel_submit, params) ==
	      VIRTIO_ACCEL_PARAMS_SIZE);
static_assert(sizeof_field(struct drm_vaccel_result, result) ==
	      sizeof_field(struct virtio_accel_resp, result));

/* Inputs and outputs of each operation (spec §8). */
static const u8 vaccel_op_arity[][2] = {
	[VIRTIO_ACCEL_OP_COPY] = { 1, 1 },
	[VIRTIO_ACCEL_OP_FILL] = { 0, 1 },
	[VIRTIO_ACCEL_OP_COMPARE] = { 2, 0 },
	[VIRTIO_ACCEL_OP_CRC32C] = { 1, 0 },
	[VIRTIO_ACCEL_OP_SHA256] = { 1, 0 },
	[VIRTIO_ACCEL_OP_AES_GCM_SEAL] = { 2, 1 },
	[VIRTIO_ACCEL_OP_AES_GCM_OPEN] = { 2, 1 },
	[VIRTIO_ACCEL_OP_DEFLATE_COMPRESS] = { 1, 1 },
	[VIRTIO_ACCEL_OP_DEFLATE_DECOMPRESS] = { 1, 1 },
};

/*
 * The out-fence of a job. Once the job's request is in a ring, @hw is the
 * fence the device issued to it (§6.2), valid in the device's @generation;
 * @hw_known is written last. Its memory is freed by dma_fence_free()
 * (kfree_rcu), which needs nothing of this module.
 */
struct vaccel_fence {
	struct dma_fence base;		/* first: dma_fence_free() frees it */
	spinlock_t lock;
	const struct vaccel_drm *owner;	/* compared, never dereferenced */
	u64 generation;
	struct virtio_accel_fence hw;
	bool hw_known;
};

static_assert(offsetof(struct vaccel_fence, base) == 0);

/* A fence a job waits for on the CPU. */
struct vaccel_wait {
	struct dma_fence_cb cb;
	struct dma_fence *fence;	/* a reference */
	struct vaccel_job *job;
};

/* A buffer of a job: a range of a GEM object, or pinned user memory. */
struct vaccel_job_buf {
	struct vaccel_bo *bo;		/* a reference, or NULL: user memory */
	u64 offset;
	u64 len;
	bool output;
	struct page **pages;		/* the pinned user pages */
	unsigned int npages;
	struct sg_table sgt;		/* the data, for a direct buffer */
	bool has_sgt;
};

struct vaccel_job {
	struct vaccel_drm *vd;		/* a reference on vd->drm */
	struct vaccel_file *file;	/* a reference */
	struct vaccel_fence *fence;	/* a reference */
	struct vaccel_request *req;
	u64 id;

	unsigned int num_bufs;
	struct vaccel_job_buf bufs[VACCEL_MAX_BUFS];

	/* In-fences that may become dependencies of the request, referenced. */
	unsigned int num_deps;
	struct vaccel_fence *deps[VACCEL_MAX_DEPS];
	/* In-fences waited for on the CPU. */
	unsigned int num_waits;
	unsigned int max_waits;
	struct vaccel_wait *waits;
	atomic_t waits_pending;

	struct vaccel_bo *results;	/* a reference, or NULL */
	struct page *results_page;
	unsigned int results_offset;	/* in results_page */

	/* Submission and completion: the last of the two frees the job. */
	atomic_t stages;
	struct work_struct submit_work;
	struct work_struct cleanup_work;
};

static struct workqueue_struct *vaccel_job_wq;
static atomic_t vaccel_jobs_live = ATOMIC_INIT(0);
/* The ops of the kernel's stub fence, which a signalled fence takes. */
static const struct dma_fence_ops *vaccel_detached_ops;

/* ---- Fences ---- */

static const char *vaccel_fence_driver_name(struct dma_fence *fence)
{
	return "virtio_accel";
}

static const char *vaccel_fence_timeline_name(struct dma_fence *fence)
{
	return "job";
}

/*
 * A fence may outlive its job, its device, its file and the module (in a
 * sync_file or another driver's syncobj). It holds no reference on the
 * module: it uses these ops only until it signals, which is before its job
 * ends (module exit waits for every job), then takes the ops of the
 * kernel's stub fence (vaccel_fence_signal_detach()). With no .release,
 * the kernel frees it (dma_fence_free()).
 */
static const struct dma_fence_ops vaccel_fence_ops = {
	.get_driver_name = vaccel_fence_driver_name,
	.get_timeline_name = vaccel_fence_timeline_name,
};

/* Jobs complete in any order: each fence has a context of its own. */
static struct vaccel_fence *vaccel_fence_create(struct vaccel_drm *vd)
{
	struct vaccel_fence *fence = kzalloc(sizeof(*fence), GFP_KERNEL);

	if (!fence)
		return NULL;
	spin_lock_init(&fence->lock);
	fence->owner = vd;
	dma_fence_init(&fence->base, &vaccel_fence_ops, &fence->lock,
		       dma_fence_context_alloc(1), 1);
	return fence;
}

/*
 * Signals @fence and leaves it without the module's ops: whoever reads
 * them later (a wait, SYNC_IOC_FILE_INFO, the release) reads the kernel's.
 * Both happen in one section under the fence's lock, as dma_fence_signal()
 * would signal it, so whoever reads the ops under that lock (adding a
 * callback, enabling signalling, the default wait, the signal's own
 * tracepoint and callbacks) sees either an unsignalled fence with this
 * module's ops, which stay loaded until its job ends after this, or a
 * signalled one with the kernel's: never a signalled fence whose ops may
 * go with the module. A reader without the lock sees one pointer or the
 * other (WRITE_ONCE(): one whole store), each valid while the module is
 * loaded, and module exit waits for an RCU grace period after the last
 * job (vaccel_jobs_exit()), as later kernels require of a driver that
 * frees what a signalled fence's ops point to: a reader under
 * rcu_read_lock() that loaded this module's ops is done with them before
 * the module goes. Readers that load the ops outside RCU with preemption
 * on keep a window against module unload: sync_fill_fence_info()
 * (SYNC_IOC_FILE_INFO), dma_fence_describe() and dma_fence_is_signaled()
 * in process context may load this module's ops, be preempted, and call or
 * read through them after the module went. 6.12 cannot close it: it has
 * no way to detach a fence from its driver; this function is the nearest.
 */
static void vaccel_fence_signal_detach(struct vaccel_fence *fence)
{
	bool cookie = dma_fence_begin_signalling();
	unsigned long flags;

	spin_lock_irqsave(fence->base.lock, flags);
	dma_fence_signal_locked(&fence->base);
	WRITE_ONCE(fence->base.ops, vaccel_detached_ops);
	spin_unlock_irqrestore(fence->base.lock, flags);
	dma_fence_end_signalling(cookie);
}

/* @fence as the fence of a job of @vd whose device fence is known, or NULL. */
static struct vaccel_fence *vaccel_own_fence(const struct vaccel_drm *vd,
					     struct dma_fence *fence)
{
	struct vaccel_fence *own;

	/* Signalled and detached meanwhile: no longer this module's. */
	if (READ_ONCE(fence->ops) != &vaccel_fence_ops)
		return NULL;
	own = container_of(fence, struct vaccel_fence, base);
	/* Pairs with the release in vaccel_job_send(): @hw is set before. */
	if (own->owner != vd || !smp_load_acquire(&own->hw_known))
		return NULL;
	return own;
}

/* ---- Open files ---- */

static void vaccel_file_release(struct kref *ref)
{
	kfree(container_of(ref, struct vaccel_file, ref));
}

void vaccel_file_put(struct vaccel_file *vf)
{
	kref_put(&vf->ref, vaccel_file_release);
}

/* ---- The life of a job ---- */

static void vaccel_job_buf_release(struct vaccel_job_buf *buf)
{
	if (buf->has_sgt)
		sg_free_table(&buf->sgt);
	if (buf->pages) {
		unpin_user_pages_dirty_lock(buf->pages, buf->npages,
					    buf->output);
		kvfree(buf->pages);
	}
	if (buf->bo)
		drm_gem_object_put(&buf->bo->base.base);
}

static void vaccel_job_drop_waits(struct vaccel_job *job)
{
	unsigned int i;

	for (i = 0; i < job->num_waits; i++)
		dma_fence_put(job->waits[i].fence);
	job->num_waits = 0;
}

/* Drops everything @job holds, then @job; process context. */
static void vaccel_job_free(struct vaccel_job *job)
{
	struct vaccel_drm *vd = job->vd;
	unsigned int i;

	for (i = 0; i < job->num_bufs; i++)
		vaccel_job_buf_release(&job->bufs[i]);
	if (job->results)
		drm_gem_object_put(&job->results->base.base);
	for (i = 0; i < job->num_deps; i++)
		dma_fence_put(&job->deps[i]->base);
	vaccel_job_drop_waits(job);
	kfree(job->waits);
	/* AES keys (§8): this driver's copy is wiped. */
	if (job->req)
		memzero_explicit(job->req->params, sizeof(job->req->params));
	vaccel_request_free(job->req);
	dma_fence_put(&job->fence->base);
	atomic_dec(&job->file->jobs);
	vaccel_file_put(job->file);
	kfree(job);
	/* After the objects: freeing one uses the device. */
	drm_dev_put(&vd->drm);
	if (atomic_dec_and_test(&vaccel_jobs_live))
		wake_up_var(&vaccel_jobs_live);
}

static void vaccel_job_cleanup_work(struct work_struct *work)
{
	vaccel_job_free(container_of(work, struct vaccel_job, cleanup_work));
}

/* Ends a stage (submission, completion); the last one frees the job. */
static void vaccel_job_stage_done(struct vaccel_job *job)
{
	if (atomic_dec_and_test(&job->stages))
		queue_work(vaccel_job_wq, &job->cleanup_work);
}

static struct drm_vaccel_result *vaccel_job_map_result(struct vaccel_job *job)
{
	return kmap_local_page(job->results_page) + job->results_offset;
}

static void vaccel_job_unmap_result(struct vaccel_job *job,
				    struct drm_vaccel_result *rec)
{
	flush_dcache_page(job->results_page);
	kunmap_local(rec);
}

/* The result record of a job that has not finished. */
static void vaccel_job_init_result(struct vaccel_job *job)
{
	struct drm_vaccel_result *rec;

	if (!job->results_page)
		return;
	rec = vaccel_job_map_result(job);
	*rec = (struct drm_vaccel_result) {
		.job_id = job->id,
		.status = DRM_VACCEL_STATUS_PENDING,
		.queue = DRM_VACCEL_NO_QUEUE,
	};
	vaccel_job_unmap_result(job, rec);
}

/*
 * Writes the job's result record, the status last, and signals its fence,
 * with @error if it failed. Any context.
 */
static void vaccel_job_finish(struct vaccel_job *job, u32 status, int error,
			      u64 bytes_written, const u8 *result, u32 queue)
{
	struct drm_vaccel_result *rec;

	if (job->results_page) {
		rec = vaccel_job_map_result(job);
		rec->error = error;
		rec->bytes_written = bytes_written;
		rec->queue = queue;
		if (result)
			memcpy(rec->result, result, sizeof(rec->result));
		else
			memset(rec->result, 0, sizeof(rec->result));
		/* Who reads the status (acquire) sees the rest. */
		smp_wmb();
		WRITE_ONCE(rec->status, status);
		vaccel_job_unmap_result(job, rec);
	}
	if (error)
		dma_fence_set_error(&job->fence->base, error);
	vaccel_fence_signal_detach(job->fence);
}

/* A job that could not reach the device. */
static void vaccel_job_fail(struct vaccel_job *job, int error)
{
	vaccel_job_finish(job, VIRTIO_ACCEL_S_DEVICE_ERROR, error, 0, NULL,
			  DRM_VACCEL_NO_QUEUE);
	vaccel_job_stage_done(job);	/* the submission */
	vaccel_job_stage_done(job);	/* the completion that never comes */
}

/* The core hands the request back: BH context, or process context. */
static void vaccel_job_done(struct vaccel_request *req)
{
	const struct virtio_accel_resp *resp = req->resp;
	struct vaccel_job *job = req->context;
	u32 status = VIRTIO_ACCEL_S_DEVICE_ERROR;
	u32 queue = DRM_VACCEL_NO_QUEUE;
	int error = req->error;

	if (req->fence_known)
		queue = le16_to_cpu(req->fence.queue);
	if (resp)
		status = le32_to_cpu(resp->status);
	if (!error)
		error = resp ? vaccel_status_errno(status) : -EIO;
	if (error && status == VIRTIO_ACCEL_S_OK)
		status = VIRTIO_ACCEL_S_DEVICE_ERROR;
	if (error)
		vaccel_job_finish(job, status, error, 0, NULL, queue);
	else
		vaccel_job_finish(job, status, 0,
				  le64_to_cpu(resp->bytes_written),
				  resp->result, queue);
	vaccel_job_stage_done(job);
}

/* ---- Waiting on the CPU ---- */

/* Makes room for @count CPU waits; SUBMIT only (it may allocate). */
static int vaccel_job_reserve_waits(struct vaccel_job *job, unsigned int count)
{
	struct vaccel_wait *waits;
	unsigned int max;

	if (count <= job->max_waits)
		return 0;
	if (count > VACCEL_MAX_WAITS)
		return -E2BIG;
	max = clamp(2 * job->max_waits, count, (unsigned int)VACCEL_MAX_WAITS);
	waits = krealloc_array(job->waits, max, sizeof(*waits), GFP_KERNEL);
	if (!waits)
		return -ENOMEM;
	job->waits = waits;
	job->max_waits = max;
	return 0;
}

/*
 * Adds @fence to the fences @job waits for, in the room reserved by
 * SUBMIT; none may be armed.
 */
static void vaccel_job_add_wait(struct vaccel_job *job, struct dma_fence *fence)
{
	if (WARN_ON_ONCE(job->num_waits >= job->max_waits))
		return;
	job->waits[job->num_waits++] = (struct vaccel_wait) {
		.fence = dma_fence_get(fence),
		.job = job,
	};
}

static void vaccel_wait_done(struct dma_fence *fence, struct dma_fence_cb *cb)
{
	struct vaccel_job *job = container_of(cb, struct vaccel_wait, cb)->job;

	if (atomic_dec_and_test(&job->waits_pending))
		queue_work(vaccel_job_wq, &job->submit_work);
}

/*
 * Arms a callback on each fence @job waits for. Returns true if none is
 * pending; false if the last callback will queue the job's submission (the
 * caller no longer owns the job then).
 */
static bool vaccel_job_arm_waits(struct vaccel_job *job)
{
	unsigned int i;

	atomic_set(&job->waits_pending, 1);
	for (i = 0; i < job->num_waits; i++) {
		struct vaccel_wait *wait = &job->waits[i];

		atomic_inc(&job->waits_pending);
		if (dma_fence_add_callback(wait->fence, &wait->cb,
					   vaccel_wait_done))
			atomic_dec(&job->waits_pending);	/* signalled */
	}
	return atomic_dec_and_test(&job->waits_pending);
}

/* ---- Submission ---- */

/*
 * Names the dependencies of the request (§6.2): the pending fences of the
 * jobs of this device instance. One on the request's own queue was issued
 * before the request is; one on another queue is named once FENCE_QUERY
 * says it was issued (not when @deferred: no control command then). The
 * others are moved to the CPU waits, whose room SUBMIT reserved. Returns
 * how many were moved. The caller is inside drm_dev_enter() and holds
 * reset_lock (read).
 */
static int vaccel_job_name_deps(struct vaccel_job *job, bool deferred)
{
	struct vaccel_request *req = job->req;
	struct vaccel_drm *vd = job->vd;
	unsigned int i;
	int moved = 0;
	int err;

	req->num_deps = 0;
	for (i = 0; i < job->num_deps; i++) {
		struct vaccel_fence *dep = job->deps[i];
		bool signalled = false;

		if (dma_fence_is_signaled(&dep->base))
			continue;
		err = 0;
		if (dep->generation != vd->generation)
			err = -ESRCH;	/* the reset fails it: wait */
		else if (le16_to_cpu(dep->hw.queue) == req->queue)
			err = 0;
		else if (deferred)
			err = -EWOULDBLOCK;
		else
			err = vaccel_fence_query(vd->vdev, &dep->hw,
						 &signalled);
		if (!err && signalled)
			continue;
		if (err) {
			vaccel_job_add_wait(job, &dep->base);
			moved++;
			continue;
		}
		req->deps[req->num_deps++] = dep->hw;
	}
	return moved;
}

/* The direct data of @buf: @len bytes from @offset of @pages. */
static int vaccel_job_buf_map(struct vaccel_job_buf *buf, struct page **pages,
			      u64 offset, gfp_t gfp)
{
	u64 npages = DIV_ROUND_UP(offset_in_page(offset) + buf->len,
				  PAGE_SIZE);
	int err;

	if (!buf->len)
		return 0;
	if (npages > UINT_MAX)
		return -E2BIG;
	err = sg_alloc_table_from_pages_segment(&buf->sgt,
						pages + (offset >> PAGE_SHIFT),
						npages, offset_in_page(offset),
						buf->len, UINT_MAX, gfp);
	buf->has_sgt = !err;
	return err;
}

/*
 * Fills in the request's buffers: a device object's range, or direct data.
 * Registration happened in SUBMIT (vaccel_job_get_objects()); an object
 * whose registration a reset has undone since is passed directly (its
 * pages mapped with @gfp), unless it is imported: its job fails with
 * -EAGAIN. Same context as vaccel_job_name_deps().
 */
static int vaccel_job_prepare_bufs(struct vaccel_job *job, gfp_t gfp)
{
	unsigned int i;
	u32 handle;
	int err;

	for (i = 0; i < job->num_bufs; i++) {
		struct vaccel_job_buf *buf = &job->bufs[i];
		struct vaccel_buf *out = &job->req->bufs[i];

		*out = (struct vaccel_buf) { .len = buf->len };
		if (buf->bo) {
			handle = vaccel_bo_current_handle(job->vd, buf->bo);
			if (handle) {
				out->handle = handle;
				out->offset = buf->offset;
				continue;
			}
			/* An imported object has no pages to pass. */
			if (buf->bo->imported)
				return -EAGAIN;
			if (!buf->has_sgt) {
				err = vaccel_job_buf_map(buf,
							 buf->bo->base.pages,
							 buf->offset, gfp);
				if (err)
					return err;
			}
		}
		out->sg = buf->has_sgt ? buf->sgt.sgl : NULL;
	}
	return 0;
}

/* Submits the request; then later jobs can depend on it on the device. */
static int vaccel_job_send(struct vaccel_job *job, gfp_t gfp)
{
	struct vaccel_fence *fence = job->fence;
	struct vaccel_request *req = job->req;
	int err;

	err = vaccel_job_prepare_bufs(job, gfp);
	if (!err)
		err = vaccel_submit(job->vd->vdev, req, gfp);
	if (err)
		return err;
	/*
	 * Until the submission stage ends, @req is not freed. The acquire
	 * pairs with the core's store of fence_known after req->fence (a
	 * backlogged request gets it on another CPU); the release with
	 * vaccel_own_fence(): @hw and @generation are set before @hw_known.
	 */
	if (smp_load_acquire(&req->fence_known)) {
		fence->hw = req->fence;
		fence->generation = job->vd->generation;
		/* Publishes @hw and @generation (see above). */
		smp_store_release(&fence->hw_known, true);
	}
	return 0;
}

/*
 * Takes reset_lock (read) for a submission. The deferred one does not
 * wait: a reset holds the lock across allocations and control commands.
 */
static int vaccel_job_lock(struct vaccel_drm *vd, bool deferred)
{
	if (!deferred)
		down_read(&vd->reset_lock);
	else if (!down_read_trylock(&vd->reset_lock))
		return -EAGAIN;
	return 0;
}

/*
 * Submits @job, whose CPU waits have all signalled; process context, from
 * SUBMIT or @deferred (see the top of this file). Returns 0 when the job is
 * on its way (submitted, or waiting for fences again), or the error that
 * keeps it from the device: the caller then fails it.
 */
static int vaccel_job_run(struct vaccel_job *job, bool deferred)
{
	gfp_t gfp = deferred ? GFP_NOWAIT : GFP_KERNEL;
	struct vaccel_drm *vd = job->vd;
	int idx, err;

	for (;;) {
		vaccel_job_drop_waits(job);
		if (!drm_dev_enter(&vd->drm, &idx))
			return -ENODEV;
		err = vaccel_job_lock(vd, deferred);
		if (err) {
			drm_dev_exit(idx);
			return err;
		}
		err = vaccel_job_name_deps(job, deferred);
		if (!err)
			err = vaccel_job_send(job, gfp);
		up_read(&vd->reset_lock);
		drm_dev_exit(idx);
		if (err <= 0)
			break;
		/* Dependencies to wait for on the CPU first. */
		if (!vaccel_job_arm_waits(job))
			return 0;
	}
	if (!err)
		vaccel_job_stage_done(job);
	return err;
}

/* Deferred submission: the out-fence is published, this signals it. */
static void vaccel_job_submit_work(struct work_struct *work)
{
	struct vaccel_job *job = container_of(work, struct vaccel_job,
					      submit_work);
	bool cookie = dma_fence_begin_signalling();
	int err = vaccel_job_run(job, true);

	if (err)
		vaccel_job_fail(job, err);
	dma_fence_end_signalling(cookie);
}

/*
 * Starts @job, which the caller no longer owns afterwards. Returns the
 * error of a submission that failed at once (the job is failed then).
 */
static int vaccel_job_start(struct vaccel_job *job)
{
	int err;

	vaccel_job_init_result(job);
	atomic_set(&job->stages, 2);
	if (!vaccel_job_arm_waits(job))
		return 0;
	err = vaccel_job_run(job, false);
	if (err)
		vaccel_job_fail(job, err);
	return err;
}

/* ---- The SUBMIT ioctl ---- */

static int vaccel_submit_check(struct vaccel_drm *vd,
			       const struct drm_vaccel_submit *args)
{
	const struct vaccel_info *info = vaccel_info(vd->vdev);

	if (args->flags & ~DRM_VACCEL_SUBMIT_FLAGS)
		return -EINVAL;
	if (args->flags & DRM_VACCEL_SUBMIT_QUEUE) {
		if (args->queue >= info->num_request_queues)
			return -EINVAL;
	} else if (args->queue) {
		return -EINVAL;
	}
	if (args->num_in_syncobjs > DRM_VACCEL_MAX_IN_SYNCOBJS ||
	    (!args->results_handle && args->results_offset))
		return -EINVAL;
	if (args->op >= ARRAY_SIZE(vaccel_op_arity) ||
	    !vaccel_has_op(vd->vdev, args->op))
		return -EOPNOTSUPP;
	if (args->num_in != vaccel_op_arity[args->op][0] ||
	    args->num_out != vaccel_op_arity[args->op][1])
		return -EINVAL;
	return 0;
}

static struct vaccel_job *vaccel_job_alloc(struct vaccel_drm *vd,
					   struct vaccel_file *vf,
					   const struct drm_vaccel_submit *args)
{
	struct vaccel_request *req;
	struct vaccel_job *job;

	if (atomic_inc_return(&vf->jobs) > VACCEL_MAX_FILE_JOBS) {
		atomic_dec(&vf->jobs);
		return ERR_PTR(-EAGAIN);
	}
	job = kzalloc(sizeof(*job), GFP_KERNEL);
	req = vaccel_request_alloc(GFP_KERNEL);
	if (!job || !req)
		goto nomem;
	job->fence = vaccel_fence_create(vd);
	if (!job->fence)
		goto nomem;
	job->vd = vd;
	drm_dev_get(&vd->drm);
	job->file = vf;
	kref_get(&vf->ref);
	atomic_inc(&vaccel_jobs_live);
	job->id = atomic64_fetch_inc(&vd->next_job_id);
	job->req = req;
	job->num_bufs = args->num_in + args->num_out;
	INIT_WORK(&job->submit_work, vaccel_job_submit_work);
	INIT_WORK(&job->cleanup_work, vaccel_job_cleanup_work);

	req->op = args->op;
	memcpy(req->params, args->params, sizeof(req->params));
	req->num_in = args->num_in;
	req->num_out = args->num_out;
	if (args->flags & DRM_VACCEL_SUBMIT_QUEUE)
		req->queue = args->queue;
	req->done = vaccel_job_done;
	req->context = job;
	return job;
nomem:
	vaccel_request_free(req);
	kfree(job);
	atomic_dec(&vf->jobs);
	return ERR_PTR(-ENOMEM);
}

/* Pins the user memory of @buf for the job: @buf->len bytes at @addr. */
static int vaccel_job_buf_pin(struct vaccel_job_buf *buf, u64 addr)
{
	unsigned long first = addr & PAGE_MASK;
	struct page **pages;
	u64 npages;
	int pinned;

	if (!buf->len)
		return 0;
	if (!access_ok(u64_to_user_ptr(addr), buf->len))
		return -EFAULT;
	npages = (PAGE_ALIGN(addr + buf->len) - first) >> PAGE_SHIFT;
	/* kvmalloc() refuses more than INT_MAX bytes. */
	if (npages > INT_MAX / sizeof(*pages))
		return -E2BIG;
	pages = kvmalloc_array(npages, sizeof(*pages), GFP_KERNEL);
	if (!pages)
		return -ENOMEM;
	/*
	 * Long-term: the job may wait for foreign fences unboundedly. The
	 * kernel then refuses writable file-backed mappings other than shmem
	 * (-EFAULT) and migrates pages out of ZONE_MOVABLE and CMA.
	 */
	pinned = pin_user_pages_fast(first, npages,
				     FOLL_LONGTERM |
				     (buf->output ? FOLL_WRITE : 0), pages);
	if (pinned < 0 || pinned != (int)npages) {
		if (pinned > 0)
			unpin_user_pages(pages, pinned);
		kvfree(pages);
		return pinned < 0 ? pinned : -EFAULT;
	}
	buf->pages = pages;
	buf->npages = npages;
	return vaccel_job_buf_map(buf, pages, offset_in_page(addr), GFP_KERNEL);
}

static int vaccel_job_get_buffer(struct vaccel_job_buf *buf,
				 struct drm_file *file,
				 const struct drm_vaccel_buffer *arg)
{
	u64 end;

	if (arg->pad)
		return -EINVAL;
	buf->len = arg->length;
	if (!arg->handle)
		return arg->offset ? -EINVAL :
				     vaccel_job_buf_pin(buf, arg->user_ptr);
	if (arg->user_ptr)
		return -EINVAL;
	buf->bo = vaccel_bo_lookup(file, arg->handle);
	if (!buf->bo)
		return -ENOENT;
	if (check_add_overflow(arg->offset, arg->length, &end) ||
	    end > buf->bo->size)
		return -EINVAL;
	buf->offset = arg->offset;
	return 0;
}

static int vaccel_job_get_buffers(struct vaccel_job *job,
				  struct drm_file *file,
				  const struct drm_vaccel_submit *args)
{
	const struct vaccel_info *info = vaccel_info(job->vd->vdev);
	struct drm_vaccel_buffer bufs[VACCEL_MAX_BUFS];
	unsigned int i;
	int err;

	if (copy_from_user(bufs, u64_to_user_ptr(args->buffers),
			   job->num_bufs * sizeof(bufs[0])))
		return -EFAULT;
	for (i = 0; i < job->num_bufs; i++) {
		if (bufs[i].length > info->max_buffer_size)
			return -E2BIG;
		job->bufs[i].output = i >= args->num_in;
		err = vaccel_job_get_buffer(&job->bufs[i], file, &bufs[i]);
		if (err)
			return err;
	}
	return 0;
}

/*
 * Registers the job's objects (or maps the pages of those that cannot be
 * device objects as direct buffers) before the job is published: the
 * deferred submission may do neither (see the top of this file).
 */
static int vaccel_job_get_objects(struct vaccel_job *job)
{
	struct vaccel_drm *vd = job->vd;
	unsigned int i;
	u32 handle;
	int err = 0;

	down_read(&vd->reset_lock);
	for (i = 0; i < job->num_bufs && !err; i++) {
		struct vaccel_job_buf *buf = &job->bufs[i];

		if (!buf->bo)
			continue;
		err = vaccel_bo_device_handle(vd, buf->bo, &handle);
		if (err && !buf->bo->imported)
			err = vaccel_job_buf_map(buf, buf->bo->base.pages,
						 buf->offset, GFP_KERNEL);
	}
	up_read(&vd->reset_lock);
	return err;
}

/* The result record: 64 bytes of an object of this device's own pages. */
static int vaccel_job_get_results(struct vaccel_job *job,
				  struct drm_file *file,
				  const struct drm_vaccel_submit *args)
{
	u64 offset = args->results_offset;
	struct vaccel_bo *bo;
	u64 end;

	if (!args->results_handle)
		return 0;
	bo = vaccel_bo_lookup(file, args->results_handle);
	if (!bo)
		return -ENOENT;
	job->results = bo;
	if (!bo->pinned ||
	    !IS_ALIGNED(offset, sizeof(struct drm_vaccel_result)) ||
	    check_add_overflow(offset, sizeof(struct drm_vaccel_result), &end) ||
	    end > bo->size)
		return -EINVAL;
	job->results_page = bo->base.pages[offset >> PAGE_SHIFT];
	job->results_offset = offset_in_page(offset);
	return 0;
}

/*
 * Adds the fences of @fence, an in-fence of the job, to its dependencies or
 * its CPU waits; consumes the reference on @fence.
 */
static int vaccel_job_add_in_fence(struct vaccel_job *job,
				   struct dma_fence *fence)
{
	const struct vaccel_info *info = vaccel_info(job->vd->vdev);
	unsigned int max_deps = 0;
	struct dma_fence_unwrap iter;
	struct vaccel_fence *own;
	struct dma_fence *f;
	int err = 0;

	if (info->capabilities & BIT_ULL(VIRTIO_ACCEL_F_FENCES))
		max_deps = min_t(u32, info->max_deps, VACCEL_MAX_DEPS);
	/* The walk holds references until its end: no break. */
	dma_fence_unwrap_for_each(f, &iter, fence) {
		if (err || dma_fence_is_signaled(f))
			continue;
		own = vaccel_own_fence(job->vd, f);
		if (own && job->num_deps < max_deps) {
			dma_fence_get(f);
			job->deps[job->num_deps++] = own;
			continue;
		}
		err = vaccel_job_reserve_waits(job, job->num_waits + 1);
		if (!err)
			vaccel_job_add_wait(job, f);
	}
	dma_fence_put(fence);
	return err;
}

static int vaccel_job_get_in_fences(struct vaccel_job *job,
				    struct drm_file *file,
				    const struct drm_vaccel_submit *args)
{
	u32 handles[DRM_VACCEL_MAX_IN_SYNCOBJS];
	struct dma_fence *fence;
	unsigned int i;
	int err;

	if (copy_from_user(handles, u64_to_user_ptr(args->in_syncobjs),
			   args->num_in_syncobjs * sizeof(handles[0])))
		return -EFAULT;
	for (i = 0; i < args->num_in_syncobjs; i++) {
		err = drm_syncobj_find_fence(file, handles[i], 0, 0, &fence);
		if (!err)
			err = vaccel_job_add_in_fence(job, fence);
		if (err)
			return err;
	}
	if (args->flags & DRM_VACCEL_SUBMIT_IN_SYNC_FILE) {
		fence = sync_file_get_fence(args->in_sync_file);
		if (!fence)
			return -EINVAL;
		err = vaccel_job_add_in_fence(job, fence);
		if (err)
			return err;
	}
	/* On the queue of a dependency, the request can always name it. */
	if (job->num_deps && job->req->queue == VACCEL_ANY_QUEUE)
		job->req->queue = le16_to_cpu(job->deps[0]->hw.queue);
	/* Each dependency may become a CPU wait at submission. */
	return vaccel_job_reserve_waits(job, job->num_deps);
}

/* Where the out-fence goes: prepared before the job starts, then filled. */
struct vaccel_out {
	struct drm_syncobj *syncobj;
	struct sync_file *sync_file;
	int fd;
};

static void vaccel_out_abort(struct vaccel_out *out)
{
	if (out->sync_file)
		fput(out->sync_file->file);
	if (out->fd >= 0)
		put_unused_fd(out->fd);
	if (out->syncobj)
		drm_syncobj_put(out->syncobj);
}

static int vaccel_out_prepare(struct vaccel_out *out, struct drm_file *file,
			      const struct drm_vaccel_submit *args,
			      struct dma_fence *fence)
{
	int err = -ENOENT;

	if (args->out_syncobj) {
		out->syncobj = drm_syncobj_find(file, args->out_syncobj);
		if (!out->syncobj)
			goto fail;
	}
	if (!(args->flags & DRM_VACCEL_SUBMIT_OUT_SYNC_FILE))
		return 0;
	out->fd = get_unused_fd_flags(O_CLOEXEC);
	if (out->fd < 0) {
		err = out->fd;
		goto fail;
	}
	err = -ENOMEM;
	out->sync_file = sync_file_create(fence);
	if (!out->sync_file)
		goto fail;
	return 0;
fail:
	vaccel_out_abort(out);
	return err;
}

static void vaccel_out_publish(struct vaccel_out *out, struct dma_fence *fence,
			       struct drm_vaccel_submit *args)
{
	if (out->syncobj) {
		drm_syncobj_replace_fence(out->syncobj, fence);
		drm_syncobj_put(out->syncobj);
	}
	if (out->sync_file) {
		fd_install(out->fd, out->sync_file->file);
		args->out_sync_file = out->fd;
	}
}

int vaccel_ioctl_submit(struct drm_device *drm, void *data,
			struct drm_file *file)
{
	struct vaccel_drm *vd = to_vaccel_drm(drm);
	struct drm_vaccel_submit *args = data;
	struct vaccel_out out = { .fd = -1 };
	struct dma_fence *fence;
	struct vaccel_job *job;
	int idx, err;

	args->out_sync_file = -1;
	if (!drm_dev_enter(drm, &idx))
		return -ENODEV;
	err = vaccel_submit_check(vd, args);
	if (err)
		goto out;
	job = vaccel_job_alloc(vd, file->driver_priv, args);
	if (IS_ERR(job)) {
		err = PTR_ERR(job);
		goto out;
	}
	err = vaccel_job_get_buffers(job, file, args);
	if (!err)
		err = vaccel_job_get_objects(job);
	if (!err)
		err = vaccel_job_get_results(job, file, args);
	if (!err)
		err = vaccel_job_get_in_fences(job, file, args);
	if (!err)
		err = vaccel_out_prepare(&out, file, args, &job->fence->base);
	if (err) {
		vaccel_job_free(job);
		goto out;
	}
	fence = dma_fence_get(&job->fence->base);
	args->job_id = job->id;
	err = vaccel_job_start(job);
	if (err)
		vaccel_out_abort(&out);
	else
		vaccel_out_publish(&out, fence, args);
	dma_fence_put(fence);
out:
	drm_dev_exit(idx);
	return err;
}

int vaccel_jobs_init(void)
{
	struct dma_fence *stub = dma_fence_get_stub();

	vaccel_detached_ops = stub->ops;
	dma_fence_put(stub);
	vaccel_job_wq = alloc_workqueue("virtio_accel_jobs", 0, 0);
	return vaccel_job_wq ? 0 : -ENOMEM;
}

/*
 * Waits for every job: their work items and callbacks are this module's,
 * and their fences use the module's ops until they signal. Then for the
 * readers that loaded those ops before vaccel_fence_signal_detach()
 * replaced them, in an RCU read-side section or with preemption off.
 */
void vaccel_jobs_exit(void)
{
	wait_var_event(&vaccel_jobs_live, !atomic_read(&vaccel_jobs_live));
	synchronize_rcu();
	destroy_workqueue(vaccel_job_wq);
}
