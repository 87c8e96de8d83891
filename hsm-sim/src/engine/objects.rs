//! Object management: `C_CreateObject`, `C_CopyObject`, `C_DestroyObject`,
//! `C_GetAttributeValue`, `C_SetAttributeValue` (with the one-way attributes and the SO-only
//! `CKA_TRUSTED`), `C_FindObjects*`, and object lookup with the visibility rules (private
//! objects only for a logged-in user; session objects only on their token).

use cryptoki_sys::*;

use super::{Ctx, Engine, SESSION_OBJECT_BASE};
use crate::rack::Rv;
use crate::rack::latency::Op;
use crate::rack::object::{AttrRead, MODIFIABLE_ATTRIBUTES, Object, Template, dec_bool};

impl Engine {
    /// The object `h` as this session may see it (a copy), or `CKR_OBJECT_HANDLE_INVALID`.
    pub(super) fn object(&self, ctx: &Ctx, h: CK_OBJECT_HANDLE) -> Result<Object, Rv> {
        let obj = if h >= SESSION_OBJECT_BASE {
            let st = self.lock()?;
            let so = st.objects.get(&h).ok_or(CKR_OBJECT_HANDLE_INVALID)?;
            if so.slot != ctx.slot || so.insertion != ctx.insertion {
                return Err(CKR_OBJECT_HANDLE_INVALID);
            }
            so.object.clone()
        } else {
            self.token(&ctx.serial)?
                .object(h)
                .cloned()
                .ok_or(CKR_OBJECT_HANDLE_INVALID)?
        };
        if obj.is_private() && !ctx.user() {
            return Err(CKR_OBJECT_HANDLE_INVALID);
        }
        Ok(obj)
    }

    /// A key for an operation: `CKR_KEY_HANDLE_INVALID` when not visible.
    pub(super) fn key_object(&self, ctx: &Ctx, h: CK_OBJECT_HANDLE) -> Result<Object, Rv> {
        self.object(ctx, h).map_err(|rv| {
            if rv == CKR_OBJECT_HANDLE_INVALID {
                CKR_KEY_HANDLE_INVALID
            } else {
                rv
            }
        })
    }

    /// `C_CreateObject`.
    pub fn create_object(
        &self,
        h: CK_SESSION_HANDLE,
        template: Template,
    ) -> Result<CK_OBJECT_HANDLE, Rv> {
        let ctx = self.enter(h, "C_CreateObject")?;
        Self::check_trusted(&ctx, &template)?;
        let obj = super::keys::object_from_template(&template)?;
        self.check_policy(&ctx, &obj)?;
        Self::check_storage_rights(&ctx, obj.is_token(), obj.is_private())?;
        if obj.is_token() {
            self.write_delay(&ctx, obj.size())?;
        }
        self.store_objects(&ctx, vec![obj]).map(|v| v[0])
    }

    /// `C_DestroyObject`.
    pub fn destroy_object(&self, h: CK_SESSION_HANDLE, o: CK_OBJECT_HANDLE) -> Result<(), Rv> {
        let ctx = self.enter(h, "C_DestroyObject")?;
        let obj = self.object(&ctx, o)?;
        if obj.is_token() && !ctx.rw {
            return Err(CKR_SESSION_READ_ONLY);
        }
        if !obj.bool(CKA_DESTROYABLE, true) {
            return Err(CKR_ACTION_PROHIBITED);
        }
        if o >= SESSION_OBJECT_BASE {
            self.lock()?.objects.remove(&o);
            return Ok(());
        }
        self.op_delay_destroy(&ctx)?;
        self.commit(&ctx, |t| t.destroy_object(o))
    }

    fn op_delay_destroy(&self, ctx: &Ctx) -> Result<(), Rv> {
        self.delay(ctx, Op::Destroy, std::time::Duration::ZERO)
    }

    /// `C_GetAttributeValue`: one answer per requested type.
    pub fn get_attributes(
        &self,
        h: CK_SESSION_HANDLE,
        o: CK_OBJECT_HANDLE,
        types: &[CK_ATTRIBUTE_TYPE],
    ) -> Result<Vec<AttrRead>, Rv> {
        let ctx = self.enter(h, "C_GetAttributeValue")?;
        let obj = self.object(&ctx, o)?;
        Ok(types.iter().map(|t| obj.read(*t)).collect())
    }

    /// `C_SetAttributeValue`.
    pub fn set_attributes(
        &self,
        h: CK_SESSION_HANDLE,
        o: CK_OBJECT_HANDLE,
        template: Template,
    ) -> Result<(), Rv> {
        let ctx = self.enter(h, "C_SetAttributeValue")?;
        let obj = self.object(&ctx, o)?;
        if obj.is_token() && !ctx.rw {
            return Err(CKR_SESSION_READ_ONLY);
        }
        if !obj.bool(CKA_MODIFIABLE, true) {
            return Err(CKR_ACTION_PROHIBITED);
        }
        let changed = self.changed(&ctx, &obj, &template, false)?;
        if o >= SESSION_OBJECT_BASE {
            if let Some(so) = self.lock()?.objects.get_mut(&o) {
                so.object = changed;
            }
            return Ok(());
        }
        self.write_delay(&ctx, changed.size())?;
        self.commit(&ctx, |t| t.replace_object(o, changed))
    }

    /// `obj` with the changes of `template` (`C_SetAttributeValue`, or `C_CopyObject` when
    /// `copy`), checked: only modifiable attributes change (a copy may also set `CKA_TOKEN`,
    /// `CKA_PRIVATE` and `CKA_MODIFIABLE`); `CKA_SENSITIVE` and `CKA_WRAP_WITH_TRUSTED` only
    /// become true, `CKA_EXTRACTABLE`, `CKA_COPYABLE` and `CKA_DESTROYABLE` only false
    /// (else `CKR_ATTRIBUTE_READ_ONLY`); `CKA_TRUSTED` becomes true for the SO only; the
    /// result must keep the token's key policy.
    pub(super) fn changed(
        &self,
        ctx: &Ctx,
        obj: &Object,
        template: &Template,
        copy: bool,
    ) -> Result<Object, Rv> {
        Self::check_trusted(ctx, template)?;
        let mut changed = obj.clone();
        for (t, v) in template.entries() {
            let new = dec_bool(v);
            let copy_only = matches!(*t, CKA_TOKEN | CKA_PRIVATE | CKA_MODIFIABLE);
            let latched = matches!(*t, CKA_COPYABLE | CKA_DESTROYABLE);
            let changeable = MODIFIABLE_ATTRIBUTES.contains(t)
                || *t >= CKA_VENDOR_DEFINED
                || latched
                || (copy && copy_only);
            if !changeable {
                // Same value as now is harmless; anything else is read-only.
                if obj.get(*t) == Some(v.as_slice()) {
                    continue;
                }
                return Err(CKR_ATTRIBUTE_READ_ONLY);
            }
            match *t {
                // Sensitive may only become true, extractable only false.
                CKA_SENSITIVE if obj.bool(CKA_SENSITIVE, true) && new == Some(false) => {
                    return Err(CKR_ATTRIBUTE_READ_ONLY);
                }
                CKA_EXTRACTABLE if !obj.bool(CKA_EXTRACTABLE, false) && new == Some(true) => {
                    return Err(CKR_ATTRIBUTE_READ_ONLY);
                }
                CKA_WRAP_WITH_TRUSTED
                    if obj.bool(CKA_WRAP_WITH_TRUSTED, false) && new == Some(false) =>
                {
                    return Err(CKR_ATTRIBUTE_READ_ONLY);
                }
                CKA_COPYABLE | CKA_DESTROYABLE | CKA_MODIFIABLE
                    if !obj.bool(*t, true) && new == Some(true) =>
                {
                    return Err(CKR_ATTRIBUTE_READ_ONLY);
                }
                CKA_SENSITIVE | CKA_EXTRACTABLE | CKA_WRAP_WITH_TRUSTED
                    if obj.class() != CKO_PRIVATE_KEY && obj.class() != CKO_SECRET_KEY =>
                {
                    return Err(CKR_ATTRIBUTE_TYPE_INVALID);
                }
                _ => {}
            }
            changed.set(*t, v.clone());
        }
        self.check_policy(ctx, &changed)?;
        Ok(changed)
    }

    /// `C_CopyObject`: `CKR_ACTION_PROHIBITED` when the object is not `CKA_COPYABLE`.
    pub fn copy_object(
        &self,
        h: CK_SESSION_HANDLE,
        o: CK_OBJECT_HANDLE,
        template: Template,
    ) -> Result<CK_OBJECT_HANDLE, Rv> {
        let ctx = self.enter(h, "C_CopyObject")?;
        let obj = self.object(&ctx, o)?;
        if !obj.bool(CKA_COPYABLE, true) {
            return Err(CKR_ACTION_PROHIBITED);
        }
        let copy = self.changed(&ctx, &obj, &template, true)?;
        Self::check_storage_rights(&ctx, copy.is_token(), copy.is_private())?;
        if copy.is_token() {
            self.write_delay(&ctx, copy.size())?;
        }
        self.store_objects(&ctx, vec![copy]).map(|v| v[0])
    }

    /// `C_FindObjectsInit`: the matching objects are fixed now.
    pub fn find_init(&self, h: CK_SESSION_HANDLE, template: Template) -> Result<(), Rv> {
        let ctx = self.enter(h, "C_FindObjectsInit")?;
        {
            let st = self.lock()?;
            if st.sessions.get(&h).is_some_and(|s| s.find.is_some()) {
                return Err(CKR_OPERATION_ACTIVE);
            }
        }
        let mut found = self.token(&ctx.serial)?.find(&template, ctx.user());
        let mut st = self.lock()?;
        let mut session_objs: Vec<CK_OBJECT_HANDLE> = st
            .objects
            .iter()
            .filter(|(_, so)| so.slot == ctx.slot && so.insertion == ctx.insertion)
            .filter(|(_, so)| ctx.user() || !so.object.is_private())
            .filter(|(_, so)| so.object.matches(&template))
            .map(|(h, _)| *h)
            .collect();
        session_objs.sort_unstable();
        found.extend(session_objs);
        let s = st.sessions.get_mut(&h).ok_or(CKR_SESSION_HANDLE_INVALID)?;
        s.find = Some((found, 0));
        Ok(())
    }

    /// `C_FindObjects`: up to `max` more handles.
    pub fn find_next(&self, h: CK_SESSION_HANDLE, max: usize) -> Result<Vec<CK_OBJECT_HANDLE>, Rv> {
        self.enter(h, "C_FindObjects")?;
        let mut st = self.lock()?;
        let s = st.sessions.get_mut(&h).ok_or(CKR_SESSION_HANDLE_INVALID)?;
        let (found, pos) = s.find.as_mut().ok_or(CKR_OPERATION_NOT_INITIALIZED)?;
        let end = pos.saturating_add(max).min(found.len());
        let out = found[*pos..end].to_vec();
        *pos = end;
        Ok(out)
    }

    /// `C_FindObjectsFinal`.
    pub fn find_final(&self, h: CK_SESSION_HANDLE) -> Result<(), Rv> {
        self.enter(h, "C_FindObjectsFinal")?;
        let mut st = self.lock()?;
        let s = st.sessions.get_mut(&h).ok_or(CKR_SESSION_HANDLE_INVALID)?;
        s.find.take().ok_or(CKR_OPERATION_NOT_INITIALIZED)?;
        Ok(())
    }
}
