"""Offline speech synthesis with eSpeak NG, for embedded demo data (no download, no subprocess).

    from unitok.data.speech import Espeak, SpeechUnavailable
    tts = Espeak()                                      # SpeechUnavailable if the library cannot load
    pcm, sr = tts.say("A cat on a blanket.", voice="en-us+f3", rate=160)   # int16 (N,), 22050 Hz

The `espeakng-loader` package ships `libespeak-ng.so` and its voice data; the library is called
through ctypes in synchronous mode (`espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, ...)`): `espeak_Synth`
returns after the callback has received every PCM chunk. The library keeps global state, so one
process holds one `Espeak` (later instances share it); calls are not thread-safe.
"""

from __future__ import annotations

import ctypes

import numpy as np

from unitok.errors import UnitokError

__all__ = ["Espeak", "SpeechUnavailable"]

# speak_lib.h
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000  # return an error instead of exit() when the voice data is missing
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_PARAM_RATE, _PARAM_PITCH = 1, 3
_EE_OK = 0
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class SpeechUnavailable(UnitokError):
    """eSpeak NG could not be loaded or initialised (the message says why, on one line)."""


class Espeak:
    _lib = None
    _rate: int = 0

    def __init__(self):
        if Espeak._lib is not None:
            return
        try:
            import espeakng_loader
        except ImportError:
            raise SpeechUnavailable("the espeakng-loader package is not installed (pip install espeakng-loader)") \
                from None
        try:
            lib = ctypes.CDLL(espeakng_loader.get_library_path())
            data = espeakng_loader.get_data_path()
        except (OSError, RuntimeError) as e:
            raise SpeechUnavailable(f"cannot load the eSpeak NG library ({str(e).splitlines()[0][:120]})") from None
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_CALLBACK]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                     ctypes.c_uint, ctypes.POINTER(ctypes.c_uint), ctypes.c_void_p]
        for f in ("espeak_SetVoiceByName", "espeak_SetParameter", "espeak_Synth", "espeak_Synchronize"):
            getattr(lib, f).restype = ctypes.c_int
        sr = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data.encode(), _INITIALIZE_DONT_EXIT)
        if sr <= 0:
            raise SpeechUnavailable(f"espeak_Initialize failed (returned {sr}; voice data {data})")
        Espeak._chunks: list[np.ndarray] = []

        def _collect(wav, n, events) -> int:  # called from espeak_Synth, in this thread
            if n > 0 and wav:
                Espeak._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
            return 0  # 0 = continue

        Espeak._callback = _CALLBACK(_collect)  # kept referenced: the library holds a raw pointer
        lib.espeak_SetSynthCallback(Espeak._callback)
        Espeak._lib, Espeak._rate = lib, sr

    @property
    def sample_rate(self) -> int:
        return Espeak._rate

    def say(self, text: str, *, voice: str = "en-us", rate: int = 160, pitch: int = 50,
            seed: int | None = None) -> tuple[np.ndarray, int]:
        """Speech for `text`: int16 PCM (N,) and the sample rate. rate: words per minute (80-450);
        pitch: 0-100; seed: seeds the library's noise (breath, aspiration; otherwise it differs from run to
        run). An unknown voice or a failed synthesis raises SpeechUnavailable."""
        lib = Espeak._lib
        if seed is not None:
            lib.espeak_ng_SetRandSeed(ctypes.c_long(seed))
        if lib.espeak_SetVoiceByName(voice.encode()) != _EE_OK:
            raise SpeechUnavailable(f"eSpeak NG has no voice {voice!r}")
        lib.espeak_SetParameter(_PARAM_RATE, int(rate), 0)
        lib.espeak_SetParameter(_PARAM_PITCH, int(pitch), 0)
        raw = text.encode("utf-8") + b"\0"
        Espeak._chunks = []
        err = lib.espeak_Synth(raw, len(raw), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        lib.espeak_Synchronize()
        if err != _EE_OK:
            raise SpeechUnavailable(f"espeak_Synth failed (error {err})")
        pcm = np.concatenate(Espeak._chunks) if Espeak._chunks else np.zeros(0, np.int16)
        Espeak._chunks = []
        return pcm.astype(np.int16, copy=False), Espeak._rate
