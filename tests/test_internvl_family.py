"""The `internvl3_5` Family beyond its notebook: `family_of` by model, config, name and checkpoint folder; videos
expanded as transformers' `InternVLProcessor` expands them (with a stand-in video processor where torchvision, which
the real one needs, is absent); the fixture images through the released processor files; errors that name the place."""
import importlib.util
import pytest, torch
from transformers import BatchFeature
from vlmkit.conversation import Conversation, ConversationError, ImageRef, ToolCall, ToolResult, Turn, VideoRef
from vlmkit.family import FAMILIES, FAMILY_SOURCES, family_of
from vlmkit.internvl.family import INTERNVL3_5, render_internvl
from vlmkit.internvl.prompt import hf_processor, to_hf_text
from vlmkit.testing import noise_image, require_fixture


@pytest.fixture
def present_families(monkeypatch):
    "FAMILIES limited to the family packages this checkout has (all three once every adapter is merged)."
    present = {n: s for n, s in FAMILY_SOURCES.items() if importlib.util.find_spec(s.split(':')[0]) is not None}
    monkeypatch.setattr(FAMILIES, 'sources', present)


@pytest.fixture(scope='module')
def tiny():
    return INTERNVL3_5.tiny()


def test_family_of_finds_internvl(present_families, tiny):
    model, _ = tiny
    assert family_of(model) is INTERNVL3_5          # by its module tree
    assert family_of(model.config) is INTERNVL3_5   # by model_type 'internvl'
    assert family_of('internvl3_5') is INTERNVL3_5
    assert family_of({'model_type': 'internvl_chat'}) is INTERNVL3_5  # the original remote-code checkpoints


def test_family_of_a_checkpoint_folder(present_families):
    assert family_of(require_fixture('tokenizers/internvl3_5')) is INTERNVL3_5  # its config.json: model_type 'internvl_chat'


class FramesAsTiles:
    "A stand-in for InternVLVideoProcessor (which needs torchvision): each frame resized to one tile by the image processor."
    def __init__(self, image_processor): self.image_processor = image_processor
    def __call__(self, videos, return_tensors=None, **kwargs):
        frames = [self.image_processor(images=list(v), return_tensors='pt')['pixel_values'] for v in videos]
        return BatchFeature(dict(pixel_values_videos=torch.stack(frames)), tensor_type=return_tensors)


def test_video_as_the_processor_expands_it():
    _, proc = INTERNVL3_5.tiny()
    proc.video_processor = FramesAsTiles(proc.image_processor)
    frames, image = [noise_image(i, (64, 48)) for i in range(3)], noise_image(5, (120, 60))
    conv = Conversation([Turn('user', [VideoRef(frames), 'What happens?', image])])
    messages = [{'role': 'user', 'content': [{'type': 'video'}, {'type': 'text', 'text': 'What happens?'}, {'type': 'image'}]}]
    text = proc.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    theirs = proc(text=[text], videos=[frames], images=[image], return_tensors='pt')
    ours = render_internvl(conv, proc)
    assert torch.equal(ours.input_ids, theirs['input_ids'][0])
    assert torch.equal(ours.visual['pixel_values'], theirs['pixel_values'])  # 3 frames, then the image's 3 tiles
    decoded = proc.tokenizer.decode(ours.input_ids)
    assert decoded.startswith('<|im_start|>user\nFrame1: <img>') and '</img>\nFrame2: <img>' in decoded
    assert ours.image_sizes == [(120, 60)]


def test_video_without_a_video_processor_names_what_is_missing(tiny):
    _, proc = tiny
    conv = Conversation([Turn('user', ['Look:', VideoRef([noise_image(0), noise_image(1)])])])
    with pytest.raises(ConversationError, match=r"turn 0 \(user\), part 1 \(video\): .*InternVLVideoProcessor, which needs"):
        render_internvl(conv, proc)


def test_crop_that_does_not_load_names_its_place(tiny):
    _, proc = tiny
    conv = Conversation([Turn('user', [noise_image(0), 'Where?']),
                         Turn('assistant', [ToolCall('crop', {'box': [0, 0, 9, 9]}, text='<tool_call>Crop [0, 0, 9, 9]</tool_call>'),
                                            ToolResult([ImageRef('missing/crop.png')]), 'Here.'])])
    with pytest.raises(ConversationError, match=r"turn 1 \(assistant\), part 1 \(tool_result\), content\[0\]: missing/crop.png"):
        render_internvl(conv, proc, training=True)


def test_image_tokens_in_text_are_refused(tiny):
    _, proc = tiny
    with pytest.raises(ConversationError, match=r"^system: the text holds <img>"):
        render_internvl(Conversation([Turn('user', 'Hi')], system='see <img>'), proc)


def test_fixture_images_through_the_released_processor_files():
    proc = hf_processor(require_fixture('tokenizers/internvl3_5'))
    images = [ImageRef(str(p)) for p in sorted(require_fixture('internvl/internvl_images').glob('*.png'))]
    pils = [r.load() for r in images]
    conv = Conversation([Turn('user', [*images, 'Compare them.'])])
    messages = [{'role': 'user', 'content': [{'type': 'image'}] * len(images) + [{'type': 'text', 'text': 'Compare them.'}]}]
    theirs = proc(text=[to_hf_text(proc.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))],
                  images=pils, return_tensors='pt')
    ours = render_internvl(conv, proc)
    assert torch.equal(ours.input_ids, theirs['input_ids'][0])
    assert torch.equal(ours.visual['pixel_values'], theirs['pixel_values'])
    assert ours.image_sizes == [im.size for im in pils]
