#!/usr/bin/env python3
"""Writes the Pillow reference data for media's unit tests (run from this directory).

Environment: the fixtures venv (scripts/requirements-fixtures.txt: Pillow 13.0, transformers 5.24).

- *.jpg / *.rgb: small JPEGs in the flavours tests/fixtures/media lacks (progressive, restart
  intervals, 4:2:2, 4:4:4, grayscale, Adobe RGB, EXIF orientation 8), and the RGB bytes
  transformers.image_utils.load_image gives for each; jpeg_cases.json lists their sizes.
- pil_resize.json: PIL.Image.resize outputs of a formula-generated image (see `pattern`, mirrored
  in resample.rs) for sizes that exercise both pass orders and all six filters.
"""
import numpy as np, json
from PIL import Image, ImageDraw
from transformers.image_utils import load_image
def pattern(W,H):
    y,x=np.mgrid[0:H,0:W]
    c=np.arange(3)[None,None,:]
    return ((x[...,None]*73 + y[...,None]*151 + c*47 + (x*y)[...,None]*13) % 256).astype(np.uint8)
def photo(W,H,seed):
    r=np.random.default_rng(seed); y,x=np.mgrid[0:H,0:W].astype(float)
    a=np.stack([128+90*np.sin(x/3+seed), 128+90*np.cos(y/2.5), 128+60*np.sin((x+y)/4)],-1)+r.normal(0,20,(H,W,3))
    im=Image.fromarray(np.clip(a,0,255).astype(np.uint8)); d=ImageDraw.Draw(im)
    d.rectangle((W//4,H//4,W//2,H//2),fill=(250,10,30)); return im
jp=[("prog420_13x11.jpg", photo(13,11,1), dict(quality=85, subsampling=2, progressive=True)),
    ("rst422_21x9.jpg", photo(21,9,2), dict(quality=80, subsampling=1, restart_marker_blocks=2, optimize=True)),
    ("gray_prog_9x14.jpg", photo(9,14,3).convert("L"), dict(quality=75, progressive=True)),
    ("q444_17x5.jpg", photo(17,5,4), dict(quality=95, subsampling=0, optimize=True)),
    ("rgb_8x6.jpg", photo(8,6,5), dict(quality=90, keep_rgb=True)),
   ]
for name, im, kw in jp:
    im.save(name, "JPEG", **kw)
ex=Image.Exif(); ex[0x0112]=8
photo(10,6,6).save("orient8_10x6.jpg","JPEG",quality=90,exif=ex.tobytes())
cases=[]
for name in [j[0] for j in jp]+["orient8_10x6.jpg"]:
    a=np.asarray(load_image(name))
    open(name.replace(".jpg",".rgb"),"wb").write(a.tobytes())
    cases.append(dict(file=name, width=a.shape[1], height=a.shape[0]))
json.dump(cases, open("jpeg_cases.json","w"), indent=1)
rs=[]
for (W,H,w,h,fs) in [(5,7,3,2,range(6)),(37,23,3,2,[3]),(20,9,41,3,[1,3]),(41,40,29,14,[2]),(41,40,29,16,[2]),(9,5,23,17,[1]),(64,48,16,12,[4]),(30,20,7,13,[5]),(17,13,40,31,[0]),(50,37,13,9,[0])]:
    src=Image.fromarray(pattern(W,H))
    for f in fs:
        out=np.asarray(src.resize((w,h),resample=f))
        rs.append(dict(src=[W,H], out=[w,h], filter=f, pixels=out.reshape(-1).tolist()))
json.dump(rs, open("pil_resize.json","w"), separators=(",",":"))
