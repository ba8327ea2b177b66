/* One reply's token loop in C: decode the last token, sample the next, and again, until Python
 * has something to do.
 *
 * The loop in Python costs 20-45 us a token (ctypes calls, the batch, the checks; after each
 * decode Python's working set starts cold), which a fast model (a small one, a GPU) feels: the
 * tiny test model decodes a token in about 300 us. Here a token costs the decode, the sample
 * and a few loads. Python gets the sampled tokens back in one list and does their text, stop
 * strings and events as before (app/engine/token_loop.py, Generator.run).
 *
 * No llama.h at build time: the functions come in as addresses (`init`) from the bindings
 * Python already loaded, so this is the same libllama, never a second copy. The batch is
 * llama.h's extended one (llama_batch_ext, llama_process), made once per call and refilled for
 * every token as llama.cpp's own tools do; the older llama_batch goes through a compatibility
 * layer that builds a new batch inside every llama_decode.
 *
 * `run` returns, with the tokens sampled so far, when
 *   - a token ends generation (llama_vocab_is_eog), or the budget of tokens is reached;
 *   - the reply's stop slot holds its request id (checked after every decode, before the next
 *     sample: Stop takes effect within one token, as in Python; no slot: never);
 *   - the reader can take an event (it has read every event sent, and the least time between
 *     events has passed): Python sends the text;
 *   - a request is waiting on the connection (POSIX; on Windows, at most max_ns later);
 *   - max_ns has passed since the call;
 *   - decoding failed (its status is returned, as llama_decode's).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>

#ifdef _WIN32
#include <windows.h>
#else
#include <poll.h>
#include <time.h>
#endif

typedef int32_t llama_token;
typedef int32_t llama_pos;
typedef int32_t llama_seq_id;

enum { PROCESS_DECODE = 1 }; /* LLAMA_PROCESS_TYPE_DECODE */

/* Why the loop returned (token_loop.End has the same values). */
enum { END_EOG = 0, END_BUDGET = 1, END_STOP = 2, END_DUE = 3, END_ERROR = 4 };

/* The most tokens one call returns. */
#define MAX_CHUNK 4096

/* libllama's functions, from `init`. */
static struct {
    void *(*batch_init)(void *ctx);
    void (*batch_free)(void *batch);
    void (*batch_clear)(void *batch);
    int32_t (*add_token)(void *batch, llama_seq_id seq_id, llama_token id);
    bool (*set_pos)(void *batch, int32_t idx, const llama_pos *pos);
    bool (*set_output)(void *batch, int32_t idx, bool value);
    int32_t (*process)(void *ctx, int type, void *batch);
    llama_token (*sample)(void *sampler, void *ctx, int32_t idx);
    bool (*is_eog)(const void *vocab, llama_token token);
} api;

static int64_t now_ns(void) {
#ifdef _WIN32
    static LARGE_INTEGER freq;
    LARGE_INTEGER count;
    if (!freq.QuadPart) QueryPerformanceFrequency(&freq);
    QueryPerformanceCounter(&count);
    return (int64_t)((double)count.QuadPart * 1e9 / (double)freq.QuadPart);
#else
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
#endif
}

static bool request_waiting(long long fd) {
#ifdef _WIN32
    (void)fd;
    return false;
#else
    if (fd < 0) return false;
    struct pollfd p = {(int)fd, POLLIN, 0};
    return poll(&p, 1, 0) > 0; /* POLLHUP too: the parent's end is for Python to see */
#endif
}

/* Decode `token` at `pos` of `seq` alone: llama_decode's status. */
static int32_t decode_one(void *ctx, void *batch, llama_token token, llama_pos pos,
                          llama_seq_id seq) {
    api.batch_clear(batch);
    int32_t idx = api.add_token(batch, seq, token);
    if (idx < 0 || !api.set_pos(batch, idx, &pos) || !api.set_output(batch, idx, true))
        return -1; /* as llama_decode's "invalid input batch" */
    return api.process(ctx, PROCESS_DECODE, batch);
}

static PyObject *init(PyObject *self, PyObject *args) {
    (void)self;
    unsigned long long a[9];
    if (!PyArg_ParseTuple(args, "KKKKKKKKK", &a[0], &a[1], &a[2], &a[3], &a[4], &a[5], &a[6],
                          &a[7], &a[8]))
        return NULL;
    for (int i = 0; i < 9; i++) {
        if (!a[i]) {
            PyErr_SetString(PyExc_ValueError, "a function's address is missing");
            return NULL;
        }
    }
    *(void **)&api.batch_init = (void *)(uintptr_t)a[0];
    *(void **)&api.batch_free = (void *)(uintptr_t)a[1];
    *(void **)&api.batch_clear = (void *)(uintptr_t)a[2];
    *(void **)&api.add_token = (void *)(uintptr_t)a[3];
    *(void **)&api.set_pos = (void *)(uintptr_t)a[4];
    *(void **)&api.set_output = (void *)(uintptr_t)a[5];
    *(void **)&api.process = (void *)(uintptr_t)a[6];
    *(void **)&api.sample = (void *)(uintptr_t)a[7];
    *(void **)&api.is_eog = (void *)(uintptr_t)a[8];
    Py_RETURN_NONE;
}

static PyObject *run(PyObject *self, PyObject *args) {
    (void)self;
    unsigned long long ctx_addr, sampler_addr, vocab_addr, stop_addr, consumed_addr;
    long long stop_value, sent, wait_ns, max_ns, fd;
    int token, pos, seq, budget, ignore_eog;
    if (!PyArg_ParseTuple(args, "KKKiiiiiKLKLLLL", &ctx_addr, &sampler_addr, &vocab_addr,
                          &token, &pos, &seq, &budget, &ignore_eog, &stop_addr, &stop_value,
                          &consumed_addr, &sent, &wait_ns, &max_ns, &fd))
        return NULL;
    if (!api.process) {
        PyErr_SetString(PyExc_RuntimeError, "init() was not called");
        return NULL;
    }
    if (budget < 1) {
        PyErr_SetString(PyExc_ValueError, "the budget must be at least one token");
        return NULL;
    }
    if (budget > MAX_CHUNK) budget = MAX_CHUNK;
    void *ctx = (void *)(uintptr_t)ctx_addr;
    void *sampler = (void *)(uintptr_t)sampler_addr;
    const void *vocab = (const void *)(uintptr_t)vocab_addr;
    volatile int64_t *stop_slot = (volatile int64_t *)(uintptr_t)stop_addr;
    volatile int64_t *consumed = (volatile int64_t *)(uintptr_t)consumed_addr;
    llama_token *out = malloc(sizeof(llama_token) * (size_t)budget);
    if (!out) return PyErr_NoMemory();
    void *batch = api.batch_init(ctx);
    if (!batch) {
        free(out);
        return PyErr_NoMemory();
    }

    int n = 0, decoded = 0, end = END_DUE;
    int32_t status = 0;
    Py_BEGIN_ALLOW_THREADS
    const int64_t started = now_ns();
    for (;;) {
        status = decode_one(ctx, batch, token, pos, seq);
        if (status != 0) {
            end = END_ERROR;
            break;
        }
        decoded++;
        pos++;
        if (stop_slot && *stop_slot == stop_value) {
            end = END_STOP;
            break;
        }
        token = api.sample(sampler, ctx, 0);
        out[n++] = token;
        if (!ignore_eog && api.is_eog(vocab, token)) {
            end = END_EOG;
            break;
        }
        if (n >= budget) {
            end = END_BUDGET;
            break;
        }
        const int64_t elapsed = now_ns() - started;
        if ((elapsed >= wait_ns && (!consumed || *consumed >= sent)) || elapsed >= max_ns ||
            request_waiting(fd)) {
            end = END_DUE;
            break;
        }
    }
    api.batch_free(batch);
    Py_END_ALLOW_THREADS

    PyObject *tokens = PyList_New(n);
    if (!tokens) {
        free(out);
        return NULL;
    }
    for (int i = 0; i < n; i++) {
        PyObject *value = PyLong_FromLong(out[i]);
        if (!value) {
            Py_DECREF(tokens);
            free(out);
            return NULL;
        }
        PyList_SET_ITEM(tokens, i, value);
    }
    free(out);
    return Py_BuildValue("(Niii)", tokens, decoded, end, (int)status);
}

static PyMethodDef methods[] = {
    {"init", init, METH_VARARGS,
     "init(llama_batch_ext_init, llama_batch_ext_free, llama_batch_ext_clear, "
     "llama_batch_ext_add_token, llama_batch_ext_set_pos, llama_batch_ext_set_output_logits, "
     "llama_process, llama_sampler_sample, llama_vocab_is_eog): their addresses"},
    {"run", run, METH_VARARGS,
     "run(ctx, sampler, vocab, token, pos, seq, budget, ignore_eog, stop_slot, stop_value, "
     "consumed_slot, sent, wait_ns, max_ns, fd) -> (tokens, decoded, end, status)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_token_loop",
    "One reply's token loop in C (see app/engine/token_loop.py).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__token_loop(void) { return PyModule_Create(&module); }
