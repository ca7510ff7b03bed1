"""Models: VQGAN+D (EMA vector quantiser), its token prior, the DCGAN baseline with an
f-AnoGAN encoder, a coarse-noise denoising autoencoder and a self-supervised anomaly segmenter
(both on one small UNet).

All implement :class:`brainad.models.protocol.GANModule`. :mod:`brainad.models.registry` maps
each model's one name to its class, params section and files; a checkpoint stores
``model.spec()`` beside the ``state_dict`` and :func:`brainad.models.registry.build_model`
rebuilds the module from that spec alone.
"""
