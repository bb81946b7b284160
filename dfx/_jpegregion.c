/*
 * _jpegregion.c -- decode only a rectangular region of a JPEG image.
 *
 * Uses the libjpeg API as extended by libjpeg-turbo (>= 1.5.0):
 *   jpeg_crop_scanline()   -- restrict decoding to a column range
 *   jpeg_skip_scanlines()  -- skip rows above the region cheaply
 * Rows below the region are never decoded (jpeg_abort_decompress).
 *
 * Python API:
 *   decode_region(data, x, y, w, h) -> (rgb, out_x, out_y, out_w, out_h)
 *
 *   data  : bytes-like object holding a complete JPEG file
 *   x,y,w,h : requested region in full-image pixel coordinates; it must
 *           lie inside the image (ValueError otherwise)
 *   rgb   : bytes, out_h rows of out_w * 3 bytes (packed RGB, no padding)
 *   out_x, out_y, out_w, out_h : the region actually returned.
 *           libjpeg-turbo widens the column range (the left edge down to
 *           an iMCU boundary, 16 px for 4:2:0), so out_x <= x and
 *           out_x + out_w >= x + w; out_y == y and out_h == h.  The caller
 *           slices columns [x - out_x, x - out_x + w) of each row.
 *           Every returned pixel equals the full-image decode with the
 *           same settings (see the guard-column note in the code).
 *
 * Decoding uses JCS_RGB, JDCT_ISLOW and fancy upsampling (libjpeg
 * defaults), i.e. the same settings as a full "accurate" decode.
 *
 * Errors: libjpeg's error_exit is replaced by a longjmp back into this
 * module, which raises ValueError with libjpeg's message.  Warnings
 * (e.g. "Premature end of JPEG file", corrupt data) raise too.
 *
 * The GIL is released for the whole decode.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>
#include <jerror.h>

#if !defined(LIBJPEG_TURBO_VERSION_NUMBER) && !defined(LIBJPEG_TURBO_VERSION)
#  error "libjpeg-turbo >= 1.5 is required (jpeg_crop_scanline/jpeg_skip_scanlines)"
#endif

/* ------------------------------------------------------------------ */
/* Error manager: longjmp instead of exit(), keep the message.        */
/* ------------------------------------------------------------------ */

typedef struct {
    struct jpeg_error_mgr pub;      /* must be first */
    jmp_buf jmp;
    char msg[JMSG_LENGTH_MAX];
} region_error_mgr;

static void
region_error_exit(j_common_ptr cinfo)
{
    region_error_mgr *err = (region_error_mgr *)cinfo->err;
    (*cinfo->err->format_message)(cinfo, err->msg);
    longjmp(err->jmp, 1);
}

static void
region_emit_message(j_common_ptr cinfo, int msg_level)
{
    /* A warning (corrupt data, a premature end of file) is an error here: the caller then takes
     * the full decode, which words the error for the result row (as a decode of the whole file
     * would). Trace messages (msg_level >= 0) are ignored. */
    if (msg_level < 0)
        (*cinfo->err->error_exit)(cinfo);
}

static void
region_output_message(j_common_ptr cinfo)
{
    (void)cinfo;                    /* never print to stderr */
}

/* ------------------------------------------------------------------ */
/* Core decode (runs without the GIL; must not touch Python objects).  */
/* ------------------------------------------------------------------ */

typedef struct {
    /* inputs */
    const unsigned char *data;
    unsigned long size;
    long x, y, w, h;
    /* outputs */
    unsigned char *pixels;          /* malloc'ed, out_h * out_w * 3 */
    long out_x, out_y, out_w, out_h;
    /* error reporting */
    int no_memory;                  /* 1: raise MemoryError, else ValueError */
    char msg[JMSG_LENGTH_MAX + 64];
} region_job;

/* Returns 0 on success, -1 on failure (job->msg set). */
static int
decode_region_nogil(region_job *job)
{
    struct jpeg_decompress_struct cinfo;
    region_error_mgr jerr;
    /* Modified after setjmp and used after longjmp: must be volatile. */
    unsigned char *volatile pixels = NULL;
    JSAMPROW *volatile rows = NULL;
    volatile int created = 0;
    long dec_x, dec_w;              /* column range actually decoded */
    int trim_left, trim_right;      /* guard columns to drop (0 or 1) */

    memset(&cinfo, 0, sizeof(cinfo));
    cinfo.err = jpeg_std_error(&jerr.pub);
    jerr.pub.error_exit = region_error_exit;
    jerr.pub.emit_message = region_emit_message;
    jerr.pub.output_message = region_output_message;
    jerr.msg[0] = '\0';

    if (setjmp(jerr.jmp)) {
        /* libjpeg error: clean up and report its message. */
        snprintf(job->msg, sizeof(job->msg), "libjpeg: %s", jerr.msg);
        goto fail;
    }

    jpeg_create_decompress(&cinfo);
    created = 1;
    jpeg_mem_src(&cinfo, job->data, job->size);
    jpeg_read_header(&cinfo, TRUE);

    /* Accurate decode settings (these are also the libjpeg defaults). */
    cinfo.out_color_space = JCS_RGB;
    cinfo.dct_method = JDCT_ISLOW;
    cinfo.do_fancy_upsampling = TRUE;

    /* Validate the region against the image size before decoding. */
    if (job->x < 0 || job->y < 0 || job->w <= 0 || job->h <= 0 ||
        job->x + job->w > (long)cinfo.image_width ||
        job->y + job->h > (long)cinfo.image_height) {
        snprintf(job->msg, sizeof(job->msg),
                 "region (%ld, %ld, %ld, %ld) outside image %ux%u",
                 job->x, job->y, job->w, job->h,
                 (unsigned)cinfo.image_width, (unsigned)cinfo.image_height);
        goto fail;
    }

    jpeg_start_decompress(&cinfo);
    if (cinfo.output_components != 3) {     /* cannot happen for JCS_RGB */
        snprintf(job->msg, sizeof(job->msg), "unexpected output components %d",
                 cinfo.output_components);
        goto fail;
    }

    /* Column crop.  jpeg_crop_scanline() aligns xoff down to an iMCU
     * boundary (16 px for 4:2:0) and widens width by the same amount; it
     * does NOT align the right edge.  The cropped column range is then
     * decoded as if it were the whole image, so fancy (triangle-filter)
     * chroma upsampling replicates chroma at the crop edges instead of
     * using the neighbouring samples: the outermost output column on a
     * cropped (non-image) edge can differ from a full decode.  Fancy
     * upsampling only reaches +-1 chroma sample, so we ask for one guard
     * column on each side and drop the outermost decoded column on every
     * side that is not a real image edge.  Every returned pixel is then
     * identical to the corresponding pixel of a full decode.
     * Rows need no guard: jpeg_skip_scanlines() keeps the upsampling
     * context, and rows below the region are decoded as context anyway. */
    {
        long img_w = (long)cinfo.output_width;
        long x0 = job->x > 0 ? job->x - 1 : 0;                 /* guard */
        long x1 = job->x + job->w < img_w ? job->x + job->w + 1 : img_w;
        JDIMENSION xoff = (JDIMENSION)x0;
        JDIMENSION width = (JDIMENSION)(x1 - x0);
        /* A full-width request needs no crop. */
        if (!(xoff == 0 && (long)width == img_w))
            jpeg_crop_scanline(&cinfo, &xoff, &width);
        dec_x = (long)xoff;
        dec_w = (long)width;
        trim_left = dec_x > 0 ? 1 : 0;
        trim_right = dec_x + dec_w < img_w ? 1 : 0;
        job->out_x = dec_x + trim_left;
        job->out_w = dec_w - trim_left - trim_right;
    }

    /* Skip rows above the region (whole iMCU rows are skipped without
     * entropy-decoding into the IDCT where possible). */
    if (job->y > 0) {
        JDIMENSION skipped = jpeg_skip_scanlines(&cinfo, (JDIMENSION)job->y);
        if ((long)skipped != job->y) {
            snprintf(job->msg, sizeof(job->msg),
                     "could only skip %u of %ld rows", (unsigned)skipped, job->y);
            goto fail;
        }
    }
    job->out_y = job->y;
    job->out_h = job->h;

    /* Read the region's rows into the buffer (stride = decoded width),
     * then drop the guard columns by compacting the rows in place. */
    {
        size_t dec_stride = (size_t)dec_w * 3;
        size_t out_stride = (size_t)job->out_w * 3;
        long i;
        pixels = (unsigned char *)malloc(dec_stride * (size_t)job->out_h);
        rows = (JSAMPROW *)malloc(sizeof(JSAMPROW) * (size_t)job->out_h);
        if (pixels == NULL || rows == NULL) {
            job->no_memory = 1;
            goto fail;
        }
        for (i = 0; i < job->out_h; i++)
            rows[i] = pixels + (size_t)i * dec_stride;
        while (cinfo.output_scanline < (JDIMENSION)(job->y + job->h)) {
            JDIMENSION done = (JDIMENSION)(cinfo.output_scanline - job->y);
            JDIMENSION n = jpeg_read_scanlines(&cinfo, rows + done,
                                               (JDIMENSION)job->out_h - done);
            if (n == 0) {           /* suspension: impossible with mem src */
                snprintf(job->msg, sizeof(job->msg), "jpeg_read_scanlines stalled");
                goto fail;
            }
        }
        if (trim_left || trim_right) {
            /* dst <= src for every row, so forward memmove is safe. */
            for (i = 0; i < job->out_h; i++)
                memmove(pixels + (size_t)i * out_stride,
                        pixels + (size_t)i * dec_stride + (size_t)trim_left * 3,
                        out_stride);
        }
    }

    /* Rows below the region are not needed: abort instead of finish. */
    jpeg_abort_decompress(&cinfo);
    jpeg_destroy_decompress(&cinfo);
    free(rows);
    job->pixels = pixels;
    return 0;

fail:
    if (created)
        jpeg_destroy_decompress(&cinfo);   /* also aborts */
    free(rows);
    free(pixels);
    job->pixels = NULL;
    return -1;
}

/* ------------------------------------------------------------------ */
/* Python wrapper                                                     */
/* ------------------------------------------------------------------ */

PyDoc_STRVAR(decode_region_doc,
"decode_region(data, x, y, w, h) -> (rgb, out_x, out_y, out_w, out_h)\n\n"
"Decode only the region (x, y, w, h) of a JPEG to packed RGB (ISLOW DCT,\n"
"fancy upsampling). The column range is widened to iMCU boundaries, so the\n"
"returned region (out_x, out_y, out_w, out_h) contains the requested one;\n"
"slice columns [x - out_x : x - out_x + w]. Raises ValueError on bad input.");

static PyObject *
py_decode_region(PyObject *self, PyObject *args)
{
    Py_buffer view;
    long x, y, w, h;
    region_job job;
    int rc;
    PyObject *bytes;
    (void)self;

    if (!PyArg_ParseTuple(args, "y*llll:decode_region", &view, &x, &y, &w, &h))
        return NULL;

    memset(&job, 0, sizeof(job));
    job.data = (const unsigned char *)view.buf;
    job.size = (unsigned long)view.len;
    job.x = x; job.y = y; job.w = w; job.h = h;

    if (view.len < 2) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "not a JPEG: data too short");
        return NULL;
    }

    Py_BEGIN_ALLOW_THREADS
    rc = decode_region_nogil(&job);
    Py_END_ALLOW_THREADS

    PyBuffer_Release(&view);

    if (rc != 0) {
        if (job.no_memory)
            return PyErr_NoMemory();
        PyErr_SetString(PyExc_ValueError, job.msg);
        return NULL;
    }

    bytes = PyBytes_FromStringAndSize((const char *)job.pixels,
                                      (Py_ssize_t)job.out_w * job.out_h * 3);
    free(job.pixels);
    if (bytes == NULL)
        return NULL;
    return Py_BuildValue("(Nllll)", bytes, job.out_x, job.out_y,
                         job.out_w, job.out_h);
}

static PyMethodDef module_methods[] = {
    {"decode_region", py_decode_region, METH_VARARGS, decode_region_doc},
    {NULL, NULL, 0, NULL}
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    "_jpegregion",
    "Partial (region) JPEG decoding with libjpeg-turbo.",
    -1,
    module_methods,
    NULL, NULL, NULL, NULL
};

PyMODINIT_FUNC
PyInit__jpegregion(void)
{
    PyObject *m = PyModule_Create(&module_def);
    if (m == NULL)
        return NULL;
    if (PyModule_AddStringConstant(m, "LIBJPEG_TURBO_VERSION",
#ifdef LIBJPEG_TURBO_VERSION
#  define JR_STR2(v) #v
#  define JR_STR(v) JR_STR2(v)
                                   JR_STR(LIBJPEG_TURBO_VERSION)
#else
                                   "unknown"
#endif
                                   ) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
