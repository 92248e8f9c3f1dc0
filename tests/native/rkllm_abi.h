/* The RKLLM 1.3.0 layout facts the binding's tests compare with ctypes: sizes and offsets as this
 * compiler lays out the structs of whichever rkllm.h came before (the stand-in's own copy of the
 * declarations, or Rockchip's real header in abi_probe.c). Uses only names both define. */
#include <stddef.h>
#include <string.h>

size_t stub_sizeof(const char *name) {
    if (!strcmp(name, "Param")) return sizeof(RKLLMParam);
    if (!strcmp(name, "ExtendParam")) return sizeof(RKLLMExtendParam);
    if (!strcmp(name, "Result")) return sizeof(RKLLMResult);
    if (!strcmp(name, "Input")) return sizeof(RKLLMInput);
    if (!strcmp(name, "MultimodalInput")) return sizeof(RKLLMMultiModalInput);
    if (!strcmp(name, "ImageInput")) return sizeof(((RKLLMMultiModalInput *)0)->image);
    if (!strcmp(name, "InferParam")) return sizeof(RKLLMInferParam);
    if (!strcmp(name, "Callbacks")) return sizeof(RKLLMCallback);
    if (!strcmp(name, "PerfStat")) return sizeof(RKLLMPerfStat);
    return 0;
}
size_t stub_offsetof(const char *name) {
    if (!strcmp(name, "Param.extend_param")) return offsetof(RKLLMParam, extend_param);
    if (!strcmp(name, "Param.skip_special_token")) return offsetof(RKLLMParam, skip_special_token);
    if (!strcmp(name, "Param.top_p")) return offsetof(RKLLMParam, top_p);
    if (!strcmp(name, "Result.perf")) return offsetof(RKLLMResult, perf);
    if (!strcmp(name, "Result.token_id")) return offsetof(RKLLMResult, token_id);
    if (!strcmp(name, "Input.input_type")) return offsetof(RKLLMInput, input_type);
    if (!strcmp(name, "Input.input_data")) return offsetof(RKLLMInput, multimodal_input);
    if (!strcmp(name, "ImageInput.image_width"))
        return offsetof(RKLLMMultiModalInput, image.image_width) - offsetof(RKLLMMultiModalInput, image);
    if (!strcmp(name, "MultimodalInput.video")) return offsetof(RKLLMMultiModalInput, video);
    if (!strcmp(name, "InferParam.keep_history")) return offsetof(RKLLMInferParam, keep_history);
    if (!strcmp(name, "InferParam.max_new_tokens")) return offsetof(RKLLMInferParam, max_new_tokens);
    if (!strcmp(name, "ExtendParam.reserved")) return offsetof(RKLLMExtendParam, reserved);
    return (size_t)-1;
}
