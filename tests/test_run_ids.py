"""Run ids are cache keys, file names and table keys: they must never move for an unchanged spec.

The specs and ids below were computed by the code of commit 6f7221c (before the namespace reshaping).
"""

from __future__ import annotations

import json

import pytest

from vqbench.registry import METHODS, TASKS
from vqbench.spec import RunSpec, make_spec

PINNED = [
    ('{"budget":{"batch_size":256,"checkpoint_interval":0,"eval_interval":200,"grad_clip":1.0,"lr":0.002,"steps":600,"warmup_steps":0,"weight_decay":0.0},"method":"vq","method_params":{"beta":0.25},"method_version":1,"seed":0,"tags":[],"task":"gmm","task_params":{"codebook_size":256,"data_dim":32,"data_seed":0,"depth":2,"hidden":128,"latent_dim":16,"n_eval":4096,"n_modes":64,"n_train":16384,"separation":2.0},"task_version":1}',
     '3ccc2097bda14ddc'),
    ('{"budget":{"batch_size":256,"checkpoint_interval":0,"eval_interval":200,"grad_clip":1.0,"lr":0.002,"steps":600,"warmup_steps":0,"weight_decay":0.0},"method":"vq-ema","method_params":{"beta":0.25,"ema":true,"ema_decay":0.95,"ema_eps":1e-05},"method_version":2,"seed":1,"tags":[],"task":"gmm","task_params":{"codebook_size":256,"data_dim":32,"data_seed":0,"depth":2,"hidden":128,"latent_dim":16,"n_eval":4096,"n_modes":64,"n_train":16384,"separation":2.0},"task_version":1}',
     '76e9957896ea4bff'),
    ('{"budget":{"batch_size":256,"checkpoint_interval":0,"eval_interval":200,"grad_clip":1.0,"lr":0.002,"steps":600,"warmup_steps":0,"weight_decay":0.0},"method":"simvq","method_params":{"beta":0.25,"bias":true,"init":"normal"},"method_version":1,"seed":2,"tags":[],"task":"gmm-codebook","task_params":{"codebook_size":256,"data_dim":16,"data_seed":0,"n_eval":4096,"n_modes":64,"n_train":16384,"separation":2.0},"task_version":1}',
     '767ae910532d374e'),
    ('{"budget":{"batch_size":256,"checkpoint_interval":0,"eval_interval":200,"grad_clip":1.0,"lr":0.002,"steps":600,"warmup_steps":0,"weight_decay":0.0},"method":"vq","method_params":{"beta":0.25},"method_version":1,"seed":0,"tags":[],"task":"manifold","task_params":{"codebook_size":256,"data_dim":64,"data_seed":0,"depth":2,"hidden":128,"intrinsic_dim":16,"latent_dim":32,"n_eval":4096,"n_train":16384},"task_version":1}',
     '249425a440d609ea'),
    ('{"budget":{"batch_size":64,"checkpoint_interval":0,"eval_interval":200,"grad_clip":1.0,"lr":0.002,"steps":400,"warmup_steps":0,"weight_decay":0.0},"method":"vq","method_params":{"beta":0.25},"method_version":1,"seed":0,"tags":[],"task":"digits","task_params":{"adv_weight":0.0,"attention":false,"channel_mult":null,"channels":32,"codebook_size":256,"disc_channels":64,"disc_layers":3,"disc_start":0,"downsample":2,"dropout":0.0,"encoder":"vqgan","encoder_weights":null,"eval_batch_size":512,"fd":"auto","feature_bank_size":16384,"latent_dim":16,"lpips":"auto","lpips_net":"alex","lpips_weight":0.0,"n_eval":297,"num_res_blocks":1,"rec_loss":"l2","split_seed":0},"task_version":1}',
     'df4e164d72c79184'),
    ('{"budget":{"batch_size":256,"checkpoint_interval":0,"eval_interval":2000,"grad_clip":1.0,"lr":0.001,"steps":20000,"warmup_steps":500,"weight_decay":0.0},"method":"simvq","method_params":{"beta":0.25,"bias":true,"init":"normal"},"method_version":1,"seed":3,"tags":[],"task":"digits","task_params":{"adv_weight":0.0,"attention":false,"channel_mult":null,"channels":32,"codebook_size":256,"disc_channels":64,"disc_layers":3,"disc_start":0,"downsample":2,"dropout":0.0,"encoder":"vqgan","encoder_weights":null,"eval_batch_size":512,"fd":"auto","feature_bank_size":16384,"latent_dim":16,"lpips":"auto","lpips_net":"alex","lpips_weight":0.0,"n_eval":297,"num_res_blocks":1,"rec_loss":"l2","split_seed":0},"task_version":1}',
     '9a6923953f4438ad'),
    ('{"budget":{"batch_size":32,"checkpoint_interval":0,"eval_interval":100,"grad_clip":1.0,"lr":0.002,"steps":200,"warmup_steps":0,"weight_decay":0.0},"method":"lfq","method_params":{"commitment_weight":0.25,"diversity_gamma":1.0,"entropy_group_size":null,"entropy_weight":0.1,"inv_temperature":100.0,"scale":1.0},"method_version":2,"seed":0,"tags":[],"task":"patches","task_params":{"adv_weight":0.0,"attention":false,"channel_mult":[1,2,2],"channels":16,"codebook_size":512,"disc_channels":64,"disc_layers":3,"disc_start":0,"downsample":4,"dropout":0.0,"encoder":"vqgan","encoder_weights":null,"eval_batch_size":256,"eval_fraction":0.2,"eval_stride":16,"fd":"auto","feature_bank_size":16384,"latent_dim":16,"lpips":"auto","lpips_net":"alex","lpips_weight":0.0,"num_res_blocks":1,"patch_size":32,"photos":["astronaut","chelsea","coffee","rocket","motorcycle"],"rec_loss":"l2","train_stride":16},"task_version":1}',
     '9c1b4d18cae3b21b'),
    ('{"budget":{"batch_size":64,"checkpoint_interval":0,"eval_interval":200,"grad_clip":1.0,"lr":0.002,"steps":400,"warmup_steps":0,"weight_decay":0.0},"method":"vq","method_params":{"beta":0.25},"method_version":1,"seed":0,"tags":[],"task":"gen-digits","task_params":{"adv_weight":0.0,"attention":false,"channel_mult":null,"channels":32,"codebook_size":256,"disc_channels":64,"disc_layers":3,"disc_start":0,"downsample":2,"dropout":0.0,"encoder":"vqgan","encoder_weights":null,"eval_batch_size":512,"fd":"auto","feature_bank_size":16384,"latent_dim":16,"lpips":"auto","lpips_net":"alex","lpips_weight":0.0,"n_eval":297,"n_samples":null,"num_res_blocks":1,"pr_k":3,"prior_batch_size":null,"prior_dim":64,"prior_dropout":0.0,"prior_heads":4,"prior_layers":2,"prior_lr":0.001,"prior_steps":null,"rec_loss":"l2","sample_batch_size":256,"split_seed":0,"temperature":1.0,"top_k":null},"task_version":1001}',
     '295a142eb99462e4'),
    ('{"budget":{"batch_size":256,"checkpoint_interval":0,"eval_interval":200,"grad_clip":1.0,"lr":0.002,"steps":600,"warmup_steps":0,"weight_decay":0.0},"method":"bsq","method_params":{"commitment_weight":0.0,"diversity_gamma":1.0,"entropy_group_size":1,"entropy_weight":0.1,"inv_temperature":1.0,"sample_entropy_weight":1.0},"method_version":2,"seed":0,"tags":[],"task":"gmm","task_params":{"codebook_size":256,"data_dim":32,"data_seed":0,"depth":2,"hidden":128,"latent_dim":16,"n_eval":4096,"n_modes":64,"n_train":16384,"separation":2.0},"task_version":1}',
     'bdbaaa3a10170e91'),
    ('{"budget":{"batch_size":256,"checkpoint_interval":0,"eval_interval":200,"grad_clip":1.0,"lr":0.002,"steps":100,"warmup_steps":0,"weight_decay":0.0},"method":"gumbel","method_params":{"hard":true,"kl_weight":0.01,"logits":"linear","schedule":"cosine","tau_end":0.0625,"tau_start":1.0},"method_version":1,"seed":0,"tags":[],"task":"gmm","task_params":{"codebook_size":256,"data_dim":32,"data_seed":0,"depth":2,"hidden":128,"latent_dim":16,"n_eval":4096,"n_modes":64,"n_train":16384,"separation":2.0},"task_version":1}',
     '68c7d6dd8c8c86be'),
    ('{"budget":{"batch_size":256,"checkpoint_interval":0,"eval_interval":200,"grad_clip":1.0,"lr":0.002,"steps":600,"warmup_steps":0,"weight_decay":0.0},"method":"vq-rotation","method_params":{"beta":0.25,"rotation":true},"method_version":1,"seed":5,"tags":[],"task":"gmm","task_params":{"codebook_size":256,"data_dim":32,"data_seed":0,"depth":2,"hidden":128,"latent_dim":16,"n_eval":4096,"n_modes":64,"n_train":16384,"separation":2.0},"task_version":1}',
     '1630a03d6c0853c2'),
    ('{"budget":{"batch_size":256,"checkpoint_interval":0,"eval_interval":200,"grad_clip":1.0,"lr":0.002,"steps":600,"warmup_steps":0,"weight_decay":0.0},"method":"vq-l2","method_params":{"beta":0.25,"code_dim":8,"l2_normalize":true},"method_version":1,"seed":0,"tags":[],"task":"gmm","task_params":{"codebook_size":512,"data_dim":32,"data_seed":0,"depth":2,"hidden":128,"latent_dim":16,"n_eval":4096,"n_modes":64,"n_train":16384,"separation":2.0},"task_version":1}',
     '2712038bed158a21'),
    ('{"budget":{"batch_size":64,"checkpoint_interval":0,"eval_interval":250,"grad_clip":1.0,"lr":0.001,"steps":500,"warmup_steps":0,"weight_decay":0.0},"method":"cvq","method_params":{"anchor":"closest","beta":0.25,"decay":0.99,"distance":"cos","init":"uniform"},"method_version":1,"seed":0,"tags":[],"task":"cifar10","task_params":{"adv_weight":0.0,"attention":false,"channel_mult":null,"channels":128,"codebook_size":1024,"data_root":null,"disc_channels":64,"disc_layers":3,"disc_start":0,"download":false,"downsample":4,"dropout":0.0,"encoder":"vqgan","encoder_weights":null,"eval_batch_size":256,"fd":"auto","feature_bank_size":16384,"latent_dim":64,"lpips":"auto","lpips_net":"alex","lpips_weight":0.0,"n_eval":null,"n_train":null,"num_res_blocks":2,"rec_loss":"l2","subset_seed":0},"task_version":1}',
     'bbf7d9e8d2a34f54'),
    ('{"budget":{"batch_size":1024,"checkpoint_interval":0,"eval_interval":1000,"grad_clip":1.0,"lr":0.001,"steps":20000,"warmup_steps":500,"weight_decay":0.0},"method":"vq-ema","method_params":{"beta":0.25,"ema":true,"ema_decay":0.99,"ema_eps":1e-05},"method_version":2,"seed":0,"tags":[],"task":"gmm","task_params":{"codebook_size":256,"data_dim":32,"data_seed":0,"depth":2,"hidden":128,"latent_dim":16,"n_eval":4096,"n_modes":64,"n_train":16384,"separation":2.0},"task_version":1}',
     'ce313a9c70238a2c'),
]


@pytest.mark.parametrize(("spec_json", "run_id"), PINNED)
def test_the_id_of_a_stored_spec_never_changes(spec_json, run_id):
    assert RunSpec.from_json(spec_json).run_id == run_id


@pytest.mark.parametrize(("spec_json", "run_id"), PINNED)
def test_make_spec_gives_the_same_id_unless_a_version_was_bumped(spec_json, run_id):
    """Resolving the same names and overrides gives the pinned id; a bumped version must give another."""
    pinned = RunSpec.from_json(spec_json)
    data = json.loads(spec_json)
    budget = data["budget"]
    spec = make_spec(pinned.task, pinned.method, pinned.task_params, pinned.method_params, seed=pinned.seed,
                     budget=budget)
    versions = (TASKS.get(pinned.task).version, METHODS.get(pinned.method).version)
    if versions == (pinned.task_version, pinned.method_version) and spec.method_params == pinned.method_params \
            and spec.task_params == pinned.task_params:
        assert spec.run_id == run_id
    else:
        assert spec.run_id != run_id
