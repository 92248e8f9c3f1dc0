/* A stand-in for librkllmrt.so 1.3.0 with the same C ABI, for testing edgevlm's binding on x86.
 * It records what it receives and drives the result callback through NORMAL, WAITING, FINISH and
 * ERROR as the real runtime does: while a UTF-8 character is incomplete it reports WAITING (with the
 * bytes so far), and the NORMAL callback that follows carries the whole character, which is why
 * Rockchip's demos print NORMAL text only. Like the real library it prints its version at init
 * from a format string, the version being a separate string (-DSTUB_VERSION=... builds another). */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#ifndef STUB_VERSION
#define STUB_VERSION "1.3.0"
#endif
static const char RUNTIME_VERSION[] = STUB_VERSION;

typedef void *LLMHandle;
typedef struct { int32_t base_domain_id; int8_t embed_flash; int8_t enabled_cpus_num; uint32_t enabled_cpus_mask;
                 uint8_t n_batch; int8_t use_cross_attn; uint8_t reserved[104]; } RKLLMExtendParam;
typedef struct { const char *model_path; int32_t max_context_len; int32_t max_new_tokens; int32_t top_k;
                 int32_t n_keep; float top_p; float temperature; float repeat_penalty; float frequency_penalty;
                 float presence_penalty; int32_t mirostat; float mirostat_tau; float mirostat_eta;
                 bool skip_special_token; bool ignore_eos_token; bool is_async; RKLLMExtendParam extend_param; } RKLLMParam;
typedef struct { float prefill_time_ms; int prefill_tokens; float generate_time_ms; int generate_tokens;
                 float memory_usage_mb; } RKLLMPerfStat;
typedef struct { const float *hidden_states; int embd_size; int num_tokens; } RKLLMResultLastHiddenLayer;
typedef struct { const float *logits; int vocab_size; int num_tokens; } RKLLMResultLogits;
typedef struct { const char *text; int32_t token_id; RKLLMResultLastHiddenLayer last_hidden_layer;
                 RKLLMResultLogits logits; RKLLMPerfStat perf; } RKLLMResult;
typedef struct { float *image_embed; size_t n_image_tokens; size_t n_image; const char *image_start;
                 const char *image_end; const char *image_content; size_t image_width; size_t image_height; } RKLLMImageInput;
typedef struct { float *video_embed; size_t n_frame_tokens; size_t n_frame_per_video; size_t n_video;
                 const char *video_start; const char *video_end; const char *video_content; size_t frame_width;
                 size_t frame_height; } RKLLMVideoInput;
typedef struct { char *prompt; RKLLMImageInput image; RKLLMVideoInput video; } RKLLMMultiModalInput;
typedef struct { float *embed; size_t n_tokens; } RKLLMEmbedInput;
typedef struct { int32_t *input_ids; size_t n_tokens; } RKLLMTokenInput;
typedef struct { const char *role; bool enable_thinking; int input_type;
                 union { const char *prompt_input; RKLLMEmbedInput embed_input; RKLLMTokenInput token_input;
                         RKLLMMultiModalInput multimodal_input; }; } RKLLMInput;
typedef struct { int32_t top_k; float top_p; float temperature; float repeat_penalty; float frequency_penalty;
                 float presence_penalty; int32_t mirostat; float mirostat_tau; float mirostat_eta; } RKLLMSamplingParam;
typedef struct { int mode; void *lora_params; void *prompt_cache_params; RKLLMSamplingParam *sampling_params;
                 int keep_history; int32_t max_new_tokens; } RKLLMInferParam;
typedef int (*LLMResultCallback)(RKLLMResult *result, void *userdata, int state);
typedef struct { LLMResultCallback result_callback; void *result_userdata; void *tokenizer_callback;
                 void *tokenizer_userdata; void *embed_callback; void *embed_userdata; } RKLLMCallback;

/* What the last calls received, read back by the test. */
static RKLLMParam g_param;
static char g_system[1024], g_prefix[256], g_postfix[256];
static char g_model_path[256], g_prompt[4096], g_image_start[64], g_image_end[64], g_image_content[64];
static RKLLMCallback g_cb;
static __thread int t_in_callback; /* Rockchip's pattern: abort from another thread, not from here */
static int g_aborts, g_aborts_in_callback;
static int g_input_type, g_keep_history, g_max_new_tokens, g_abort, g_running = 0, g_inits, g_destroys, g_clears,
           g_templates, g_runs;
static size_t g_n_image_tokens, g_n_image, g_width, g_height;
static double g_embed_sum;
static float g_embed_first, g_embed_last;
static int g_handle_token;

#include "rkllm_abi.h"

const char *stub_str(const char *name) {
    if (!strcmp(name, "model_path")) return g_model_path;
    if (!strcmp(name, "prompt")) return g_prompt;
    if (!strcmp(name, "image_start")) return g_image_start;
    if (!strcmp(name, "image_end")) return g_image_end;
    if (!strcmp(name, "image_content")) return g_image_content;
    if (!strcmp(name, "system")) return g_system;
    if (!strcmp(name, "prefix")) return g_prefix;
    if (!strcmp(name, "postfix")) return g_postfix;
    return RUNTIME_VERSION;
}
double stub_num(const char *name) {
    if (!strcmp(name, "max_context_len")) return g_param.max_context_len;
    if (!strcmp(name, "max_new_tokens_param")) return g_param.max_new_tokens;
    if (!strcmp(name, "temperature")) return g_param.temperature;
    if (!strcmp(name, "top_k")) return g_param.top_k;
    if (!strcmp(name, "skip_special_token")) return g_param.skip_special_token;
    if (!strcmp(name, "base_domain_id")) return g_param.extend_param.base_domain_id;
    if (!strcmp(name, "input_type")) return g_input_type;
    if (!strcmp(name, "keep_history")) return g_keep_history;
    if (!strcmp(name, "max_new_tokens")) return g_max_new_tokens;
    if (!strcmp(name, "n_image_tokens")) return (double)g_n_image_tokens;
    if (!strcmp(name, "n_image")) return (double)g_n_image;
    if (!strcmp(name, "image_width")) return (double)g_width;
    if (!strcmp(name, "image_height")) return (double)g_height;
    if (!strcmp(name, "embed_sum")) return g_embed_sum;
    if (!strcmp(name, "embed_first")) return g_embed_first;
    if (!strcmp(name, "embed_last")) return g_embed_last;
    if (!strcmp(name, "inits")) return g_inits;
    if (!strcmp(name, "destroys")) return g_destroys;
    if (!strcmp(name, "clears")) return g_clears;
    if (!strcmp(name, "templates")) return g_templates;
    if (!strcmp(name, "runs")) return g_runs;
    if (!strcmp(name, "running")) return g_running;
    if (!strcmp(name, "aborts")) return g_aborts;
    if (!strcmp(name, "aborts_in_callback")) return g_aborts_in_callback;
    return -1;
}

RKLLMParam rkllm_createDefaultParam(void) {
    RKLLMParam p;
    memset(&p, 0, sizeof p);
    p.max_context_len = 512; p.max_new_tokens = -1; p.top_k = 40; p.top_p = 0.9f; p.temperature = 0.8f;
    p.repeat_penalty = 1.1f; p.skip_special_token = false; p.extend_param.enabled_cpus_num = 4;
    return p;
}

int rkllm_init(LLMHandle *handle, RKLLMParam *param, RKLLMCallback *callback) {
    if (!param || !callback || !callback->result_callback) return -1;
    fprintf(stderr, "I rkllm: rkllm-runtime version: %s, rknpu driver version: %s, platform: %s\n",
            RUNTIME_VERSION, "0.9.8", "RK3588");
    g_param = *param;
    strncpy(g_model_path, param->model_path ? param->model_path : "", sizeof g_model_path - 1);
    g_cb = *callback;
    *handle = &g_handle_token;
    g_inits++;
    return 0;
}

int rkllm_set_chat_template(LLMHandle handle, const char *system, const char *prefix, const char *postfix) {
    if (handle != &g_handle_token || !system || !prefix || !postfix) return -1;
    strncpy(g_system, system, sizeof g_system - 1); g_system[sizeof g_system - 1] = 0;
    strncpy(g_prefix, prefix, sizeof g_prefix - 1); g_prefix[sizeof g_prefix - 1] = 0;
    strncpy(g_postfix, postfix, sizeof g_postfix - 1); g_postfix[sizeof g_postfix - 1] = 0;
    g_templates++;
    return 0;
}

static int emit(const char *text, int token, int state) {
    RKLLMResult r;
    memset(&r, 0, sizeof r);
    r.text = text; r.token_id = token;
    t_in_callback = 1;
    int ret = g_cb.result_callback(&r, g_cb.result_userdata, state);
    t_in_callback = 0;
    return ret;
}

int rkllm_run(LLMHandle handle, RKLLMInput *input, RKLLMInferParam *infer, void *userdata) {
    (void)userdata;
    if (handle != &g_handle_token) return -1;
    g_running = 1; g_abort = 0; g_runs++;
    g_input_type = input->input_type;
    g_keep_history = infer->keep_history;
    g_max_new_tokens = infer->max_new_tokens;
    g_n_image_tokens = g_n_image = g_width = g_height = 0; g_embed_sum = 0;
    const char *prompt = input->input_type == 3 ? input->multimodal_input.prompt : input->prompt_input;
    strncpy(g_prompt, prompt ? prompt : "", sizeof g_prompt - 1);
    if (input->input_type == 3) {
        RKLLMImageInput *im = &input->multimodal_input.image;
        g_n_image_tokens = im->n_image_tokens; g_n_image = im->n_image;
        g_width = im->image_width; g_height = im->image_height;
        strncpy(g_image_start, im->image_start, sizeof g_image_start - 1);
        strncpy(g_image_end, im->image_end, sizeof g_image_end - 1);
        strncpy(g_image_content, im->image_content, sizeof g_image_content - 1);
        size_t n = im->n_image_tokens * im->n_image * 8; /* the tests use dim 8 */
        for (size_t i = 0; i < n; i++) g_embed_sum += im->image_embed[i];
        g_embed_first = im->image_embed[0]; g_embed_last = im->image_embed[n - 1];
    }
    if (!strcmp(g_prompt, "fail")) { emit(NULL, -1, 3); g_running = 0; return 0; }
    /* "你" is E4 BD A0: a token ends after its first two bytes, reported as WAITING with those bytes;
     * the next token completes it and the NORMAL callback carries the whole of "你好" (E5 A5 BD). */
    static const char *pieces[] = {"Hel", "lo ", "\xE4\xBD", "\xE4\xBD\xA0\xE5\xA5\xBD", "!", " more", " more",
                                   " more"};
    static const int states[] = {0, 0, 1, 0, 0, 0, 0, 0};
    int n = (int)(sizeof pieces / sizeof *pieces), tokens = 0;
    for (int i = 0; i < n && !g_abort; i++) {
        emit(pieces[i], 100 + i, states[i]);
        tokens++;
    }
    RKLLMResult r;
    memset(&r, 0, sizeof r);
    r.perf.prefill_time_ms = 12.5f; r.perf.prefill_tokens = 42; r.perf.generate_time_ms = 7.25f;
    r.perf.generate_tokens = tokens; r.perf.memory_usage_mb = 321.0f;
    g_cb.result_callback(&r, g_cb.result_userdata, 2);
    g_running = 0;
    return 0;
}

int rkllm_abort(LLMHandle handle) {
    g_abort = 1; g_aborts++; g_aborts_in_callback += t_in_callback;
    return handle == &g_handle_token ? 0 : -1;
}
int rkllm_is_running(LLMHandle handle) { (void)handle; return g_running ? 1 : 0; } /* 1: running */
int rkllm_destroy(LLMHandle handle) { (void)handle; g_destroys++; return 0; }
int rkllm_clear_kv_cache(LLMHandle handle, int keep_system_prompt, int *start, int *end) {
    (void)handle; (void)keep_system_prompt; (void)start; (void)end; g_clears++; return 0;
}
